"""model_assets.bundle_assets: what an export copies in, and the config it writes."""

from __future__ import annotations

from clapkit.hub.assets import bundle_assets


def test_paths_become_assets_weights_are_dropped_words_stay(tmp_path):
    text = tmp_path / "src" / "text_model"
    text.mkdir(parents=True)
    (text / "config.json").write_text("{}")
    other = tmp_path / "other" / "text_model"
    other.mkdir(parents=True)
    weights = tmp_path / "ESRNXFBSP.pt"
    weights.write_bytes(b"x")
    config = {"class_path": "clapkit.lightning_modules.ContrastiveTask", "init_args": {
        "a": {"model": str(text), "pooling": "pooler", "again": str(text)},
        "b": {"model": str(other), "weights": str(weights)},
        "c": {"model": "./kept", "missing": str(tmp_path / "nowhere")},
    }}
    bundled = bundle_assets(config)
    args = bundled.config["init_args"]
    assert args["a"] == {"model": "./text_model", "pooling": "pooler", "again": "./text_model"}
    assert args["b"] == {"model": "./text_model_2", "weights": None}
    assert args["c"] == {"model": "./kept", "missing": str(tmp_path / "nowhere")}
    assert bundled.assets == {"text_model": text.resolve(), "text_model_2": other.resolve()}
    assert bundled.dropped == ["init_args.b.weights"]
    assert bundled.config["class_path"] == config["class_path"]
