"""Compressed media for tests: mp4 video and multichannel m4a written with PyAV (optional).

PyAV writes the files; clapkit reads them through torchcodec, which needs FFmpeg's shared
libraries on the machine. The ``*_available`` checks say whether both work here; tests that
need them skip otherwise (CI has neither). To run them: ``pip install -e .[media]`` and FFmpeg
4-8 shared libraries on the loader path (system packages, or ``LD_LIBRARY_PATH`` pointing at
a folder of ``libavcodec.so.N``-style links).
"""

from __future__ import annotations

import io

import numpy as np


def mp4_bytes(levels: list[int], height: int = 40, width: int = 48, fps: int = 10) -> bytes:
    """An H.264 mp4 whose frame ``i`` is flat grey at ``levels[i]``."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "0"}  # lossless luma: the grey levels survive exactly
        for level in levels:
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), level, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def m4a_bytes(wave: np.ndarray, sample_rate: int) -> bytes:
    """``wave`` ``[C, T]`` float in [-1, 1] as AAC in an m4a (4 channels: layout 4.0, order kept)."""
    import av

    channels = wave.shape[0]
    layout = {1: "mono", 2: "stereo", 4: "4.0"}[channels]
    buf = io.BytesIO()
    with av.open(buf, "w", format="ipod") as container:
        stream = container.add_stream("aac", rate=sample_rate, layout=layout)
        stream.bit_rate = 64000 * channels
        step = 1024
        for start in range(0, wave.shape[1], step):
            chunk = np.ascontiguousarray(wave[:, start:start + step], dtype=np.float32)
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            frame.sample_rate = sample_rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def video_tools_available() -> bool:
    """PyAV can write an mp4 and torchcodec (with its FFmpeg libraries) can read it back."""
    try:
        from torchcodec.decoders import VideoDecoder

        return len(VideoDecoder(mp4_bytes([0, 255]))) == 2
    except Exception:  # ImportError, or torchcodec's OSError/RuntimeError without FFmpeg
        return False


def audio_tools_available() -> bool:
    """PyAV can write an m4a and torchcodec (with its FFmpeg libraries) can read it back."""
    try:
        from torchcodec.decoders import AudioDecoder

        data = m4a_bytes(np.zeros((1, 2048), np.float32), 16000)
        return AudioDecoder(data).get_all_samples().data.shape[0] == 1
    except Exception:
        return False
