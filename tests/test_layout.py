"""The package's layout is its architecture: each folder a concern, imports only run downwards.

    shared      config, cli, errors, imresize, metrics, signals     (the top-level modules)
    model       the architecture, its alignment, loss, FLOP count
    data        shard format, sources, packing, the training stream, the validation set
    training    the trainer and what it is built from
    inference   what upscale and evaluate share, and the two commands
    tools       benchmarks and the demo
    entry       train.py, commands.py and the `python -m vsrpp_dist.X` entry modules

A module may import from its own layer and the layers below it, never from a layer above; and the
modules imported when a module is loaded (not inside functions) form no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "vsrpp_dist"
LAYERS = ("shared", "model", "data", "training", "inference", "tools", "entry")
ENTRY_MODULES = {"train", "commands", "pack", "upscale", "evaluate", "export", "bench", "demo"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "shared"  # vsrpp_dist/__init__.py: the version
    if len(parts) == 2 and not (PACKAGE / parts[1]).is_dir():
        return "entry" if parts[1] in ENTRY_MODULES else "shared"
    return parts[1]


def imports_of(path: Path) -> list[tuple[str, bool]]:
    """(imported vsrpp_dist module, at module level?) for every import in the file."""
    tree = ast.parse(path.read_text())
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("vsrpp_dist"):
                # `from . import x` may name a submodule
                names = [f"{target}.{a.name}" if (PACKAGE.parent / f"{target}.{a.name}".replace(".", "/")).with_suffix(
                    ".py").exists() else target for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("vsrpp_dist")]
        for name in names:
            found.append((name, id(node) in top_level))
    return found


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_every_module_sits_in_a_known_layer():
    assert {layer_of(m) for m in all_modules()} <= set(LAYERS)
    for folder in ("model", "data", "training", "inference", "tools"):
        assert (PACKAGE / folder / "__init__.py").is_file(), folder


def test_imports_only_run_downwards():
    modules = all_modules()
    upward = []
    for name, path in modules.items():
        for target, _ in imports_of(path):
            target = target if target in modules else target.rsplit(".", 1)[0]
            if LAYERS.index(layer_of(target)) > LAYERS.index(layer_of(name)):
                upward.append(f"{name} ({layer_of(name)}) imports {target} ({layer_of(target)})")
    assert not upward, "\n".join(upward)


def test_module_level_imports_have_no_cycle():
    modules = all_modules()
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for target, top in imports_of(path):
            target = target if target in modules else target.rsplit(".", 1)[0]
            if top and target != name and target in graph:
                graph[name].add(target)
    seen: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(graph[node]):
            if seen.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in seen:
                visit(nxt, path + [nxt])
        seen[node] = 2

    for start in sorted(graph):
        if start not in seen:
            visit(start, [start])


def test_the_entry_modules_and_console_command_reach_every_command():
    from vsrpp_dist import commands

    for name, (module, _) in commands.COMMANDS.items():
        assert callable(__import__(module, fromlist=["cli"]).cli), name
    assert commands.main(["--help"]) == 0
    assert commands.main(["nope"]) == 2
    for entry in ("pack", "upscale", "evaluate", "export", "bench", "demo"):
        assert "cli" in (PACKAGE / f"{entry}.py").read_text()


def test_the_scale_is_defined_once():
    from vsrpp_dist.config import SCALE, ModelConfig
    from vsrpp_dist.data import shard_format
    from vsrpp_dist.model.architecture import VSRBidirectional_3x

    assert VSRBidirectional_3x.scale == ModelConfig().scale == shard_format.SCALE == SCALE == 3
    source = "\n".join(p.read_text() for p in PACKAGE.rglob("*.py"))
    assert source.count("SCALE = 3") == 1
    # and no literal 3 stands for it: a 3 multiplying or dividing a patch, LR/GT size or tile is the scale
    literal = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.FloorDiv, ast.Div)):
                sides = (node.left, node.right)
                if any(isinstance(s, ast.Constant) and s.value == 3 for s in sides):
                    other = " ".join(ast.get_source_segment(text, s) or "" for s in sides).lower()
                    if any(word in other for word in ("patch", "tile", "lr_", "lq", "gt_")):
                        literal.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {ast.get_source_segment(text, node)}")
    assert not literal, "use SCALE:\n" + "\n".join(literal)
