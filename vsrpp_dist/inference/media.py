"""What a video output keeps of its source besides the pictures: timestamps, rotation, colour tags and
the audio, read and copied with PyAV (no re-encoding of the audio).

- Timestamps: each output frame gets its source frame's presentation timestamp in the source's time
  base, so a variable-rate source stays variable-rate and audio stays in sync. They come from the
  video packets (demuxed, not decoded: cheap), sorted into presentation order; where their count does
  not match the decoded frames the output falls back to the average rate, with a note.
- Rotation: the source's display matrix (phones film upright with a rotation tag), set on the output.
- Colour: the source's primaries, transfer and matrix tags where it has them, else BT.709 (the HD
  standard: a x3 output is HD), limited range; the RGB -> YUV conversion uses the tagged matrix, so
  players that honour the tag show the colours the model produced.
- Audio: every audio stream is copied packet for packet (`add_stream_from_template`), interleaved with
  the video by time; with `--limit` it ends with the last frame.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction

# AVColorSpace values -> the reformatter's matrices (the ones swscale converts with)
_MATRICES = {1: "ITU709", 5: "ITU601", 6: "ITU601", 9: "BT2020"}
BT709 = 1
UNSPECIFIED = 2


@dataclass
class Colour:
    primaries: int = BT709
    transfer: int = BT709
    matrix: int = BT709

    @property
    def reformatter_matrix(self) -> str:
        return _MATRICES.get(self.matrix, "ITU709")


@dataclass
class SourceMedia:
    """What `upscale` copies from a source video into its output."""

    path: str
    time_base: Fraction | None = None
    timestamps: list[int] = field(default_factory=list)  # presentation order, in time_base
    rotation: int = 0  # degrees counter-clockwise, as VideoFrame.rotation reads it
    colour: Colour = field(default_factory=Colour)
    audio_streams: int = 0

    def timestamp(self, index: int) -> int | None:
        return self.timestamps[index] if index < len(self.timestamps) else None


def probe(path: str) -> SourceMedia | None:
    """The source's timing, rotation, colour and audio; None when the file cannot be read (decoding
    then fails with its own message)."""
    import av

    try:
        with av.open(path) as container:
            video = container.streams.video[0]
            media = SourceMedia(path, time_base=Fraction(video.time_base) if video.time_base else None,
                                audio_streams=len(container.streams.audio))
            ctx = video.codec_context
            tagged = [v for v in (ctx.color_primaries, ctx.color_trc, ctx.colorspace) if v not in (0, UNSPECIFIED)]
            if tagged:
                media.colour = Colour(primaries=_specified(ctx.color_primaries), transfer=_specified(ctx.color_trc),
                                      matrix=_specified(ctx.colorspace))
            first = next(container.decode(video), None)
            if first is not None:
                media.rotation = int(round(first.rotation or 0))
            container.seek(0)
            media.timestamps = sorted(p.pts for p in container.demux(video) if p.pts is not None)
    except Exception:
        return None
    return media


def _specified(value) -> int:
    value = int(value)
    return BT709 if value in (0, UNSPECIFIED) else value


class AudioCopy:
    """The source's audio packets remuxed into an output container, up to a time."""

    def __init__(self, source_path: str, output) -> None:
        import av

        self.input = av.open(source_path)
        self.streams = {s.index: output.add_stream_from_template(s) for s in self.input.streams.audio}
        self.output = output
        self.packets: Iterator = iter(self.input.demux(*self.input.streams.audio))
        self.waiting = None  # the first packet past the last `until`

    def until(self, seconds: float | None) -> None:
        """Mux every packet that starts before `seconds` (all of them: None)."""
        while True:
            packet = self.waiting or next(self.packets, None)
            self.waiting = None
            if packet is None:
                return
            if packet.dts is None:  # the demuxer's end-of-stream marker
                continue
            start = packet.pts if packet.pts is not None else packet.dts
            if seconds is not None and start * packet.time_base >= seconds:
                self.waiting = packet
                return
            packet.stream = self.streams[packet.stream.index]
            self.output.mux(packet)

    def close(self) -> None:
        self.input.close()
