import json

from PIL import Image

from quantomni.cli.main import main


def test_generate_writes_image_and_reports(demo_model_dir, tmp_path, capsys):
    out = tmp_path / "img.png"
    rc = main(["generate", "--model", str(demo_model_dir("flux")), "--quantization", "fp8", "--prompt", "a cat",
               "--height", "32", "--width", "32", "--num-inference-steps", "2", "--seed", "42", "--output", str(out),
               "--device", "cpu", "--no-progress"])
    assert rc == 0
    assert Image.open(out).size == (32, 32)
    report = json.loads(capsys.readouterr().out)
    assert report["quantization"]["transformer"]["quantized_layers"] > 0


def test_generate_with_quantization_config_file(demo_model_dir, tmp_path):
    cfg = tmp_path / "q.json"
    cfg.write_text(json.dumps({"transformer": {"method": "int8", "ignored_layers": ["*.ff.*"]}}))
    rc = main(["generate", "--model", str(demo_model_dir("flux")), "--quantization-config", str(cfg), "--prompt", "x",
               "--height", "32", "--width", "32", "--num-inference-steps", "1", "--output", str(tmp_path / "o.png"),
               "--device", "cpu", "--no-progress"])
    assert rc == 0


def test_inspect_text_and_json(demo_model_dir, capsys):
    model = str(demo_model_dir("sd3"))
    assert main(["inspect", model, "-q", "int8"]) == 0
    text = capsys.readouterr().out
    assert "SD3Transformer2DModel" in text and "sensitive: sd3" in text and "int8" in text
    assert main(["inspect", model, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["components"]["transformer"]["quantization"]["method"] is None
    assert info["plans"]["transformer"]["layers"]


def test_errors_are_messages_not_tracebacks(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path), "--prompt", "x", "--device", "cpu"]) == 2
    assert "no model_index.json" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path), "-q", "fp9"]) == 2
    assert "unknown quantization method 'fp9'" in capsys.readouterr().err


def test_demo_model_and_demo(tmp_path, capsys):
    assert main(["demo-model", str(tmp_path / "m"), "--arch", "flux"]) == 0
    assert (tmp_path / "m" / "model_index.json").is_file()
    assert main(["demo", "--out", str(tmp_path / "d"), "--repeats", "1", "--size", "32", "--num-inference-steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "PSNR vs BF16" in out and "fp8" in out and "int8" in out
    report = json.loads((tmp_path / "d" / "report.json").read_text())
    assert [r["method"] for r in report["rows"]] == ["bf16", "fp8", "int8"]


def test_serve_flags_map_to_settings():
    from quantomni.cli.main import build_parser
    from quantomni.cli.serve import _settings

    args = build_parser().parse_args(["serve", "some-dir", "--port", "9000", "--api-key", "k", "--max-batch-size", "2",
                                      "--max-queue", "5", "--request-timeout", "7", "--default-size", "64x64",
                                      "--default-steps", "3", "--enforce-eager"])
    s = _settings(args)
    assert (s.host, s.port, s.api_key, s.max_batch_size, s.max_queue) == ("127.0.0.1", 9000, "k", 2, 5)
    assert (s.request_timeout_s, s.default_size, s.default_num_inference_steps) == (7.0, "64x64", 3)
    assert args.enforce_eager


def test_set_progress_toggles_the_pipeline_bar(demo_model_dir):
    from quantomni import Omni

    omni = Omni(demo_model_dir("flux"), device="cpu", progress=True)
    omni.set_progress(False)
    assert omni.pipe._progress_bar_config["disable"] is True


def test_attention_flag_in_generate_and_inspect(demo_model_dir, tmp_path, capsys):
    out = tmp_path / "img.png"
    rc = main(["generate", "--model", str(demo_model_dir("flux")), "--attention", "int8", "--prompt", "a cat",
               "--height", "32", "--width", "32", "--num-inference-steps", "1", "--seed", "1", "--output", str(out),
               "--device", "cpu", "--no-progress"])
    assert rc == 0 and Image.open(out).size == (32, 32)
    report = json.loads(capsys.readouterr().out)
    assert report["attention"]["mode"] == "int8" and report["attention"]["kernel"] == "torch"
    assert main(["inspect", str(demo_model_dir("flux")), "--attention", "int8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["attention"].startswith("int8: INT8 QK^T + FP8 PV")
    assert main(["inspect", str(demo_model_dir("sd3")), "--attention", "int8"]) == 2
    assert "not supported for architecture 'sd3'" in capsys.readouterr().err
