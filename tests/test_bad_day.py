"""What a user meets on a bad day (issue 14): hostile inputs, kills, logs, permissions, wrong hints. Each test
here failed on the main of 642013e and passes now."""

import os
import pickle

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from nucleiseg.cli import main as cli
from nucleiseg.config.compose import compose
from nucleiseg.config.settings import defaults
from nucleiseg.data.image_io import read_mask, read_rgb
from nucleiseg.training.identity import run_folder
from nucleiseg.training.run import main, run
from nucleiseg.util.errors import ConfigError, ImageReadError
from tests.conftest import fast_run_overrides, run_train


def _runs(uri, study):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(study)
    return [] if experiment is None else [r for r in client.search_runs([experiment.experiment_id])]


def test_outputs_keep_the_umask_permissions(trained_run, tmp_path):
    from nucleiseg.inference.session import InferenceSession
    from nucleiseg.predict.run import predict
    from nucleiseg.util.writing import write_bytes_atomic, write_json_atomic

    previous = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "run.json", {"a": 1})
        image, _ = np.full((40, 40, 3), 200, np.uint8), None
        Image.fromarray(image).save(tmp_path / "tile.png")
        session = InferenceSession.from_checkpoint(trained_run[3], defaults("predict", tile_size=64))
        assert predict([tmp_path / "tile.png"], tmp_path / "out", session, progress="none").ok
        write_bytes_atomic(tmp_path / "b.bin", b"x")
    finally:
        os.umask(previous)
    for path in [tmp_path / "run.json", tmp_path / "b.bin", *(tmp_path / "out" / "tile").iterdir()]:
        assert path.stat().st_mode & 0o777 == 0o644, path  # colleagues can read them


def test_a_misspelt_key_gets_the_closest_existing_one(capsys):
    with pytest.raises(ConfigError, match="did you mean trainer.max_epochs"):
        compose(["trainer.max_epoch=3"])
    result = run_train("encoder=unet,unet_bn", "trainer.max_epoch=1", multirun=True, timeout=120)
    assert result.returncode == 2
    assert "trainer.max_epoch is not a configuration key; did you mean trainer.max_epochs?" in result.stderr
    assert "+trainer.max_epoch" not in result.stderr  # not Hydra's advice to add a key nothing reads


def test_monuseg_hints_and_layouts(tmp_path, monuseg_root):
    from nucleiseg.data.monuseg import find_monuseg
    from nucleiseg.util.errors import DatasetLayoutError

    xml = sorted((monuseg_root / "Annotations").glob("*.xml"))[0]
    xml.unlink()
    with pytest.raises(DatasetLayoutError, match="data.sources.monuseg.mask_dir"):
        find_monuseg(monuseg_root)
    # TCGA images alone in a folder, their masks in mask_dir: accepted without a "Tissue Images" folder
    flat, masks = tmp_path / "flat", tmp_path / "masks"
    flat.mkdir()
    masks.mkdir()
    for image in sorted((monuseg_root / "Tissue Images").glob("*.tif")):
        (flat / image.name).write_bytes(image.read_bytes())
        Image.fromarray(np.pad(np.ones((10, 10), np.uint8) * 255, 20)).save(masks / f"{image.stem}.png")
    assert len(find_monuseg(flat, masks)) == 4


def test_one_line_per_run_for_seed_and_dataset_and_no_deprecation_noise(tmp_path, tracking_uri):
    from nucleiseg.data.prepare import prepare_dataset

    overrides = [*fast_run_overrides(tmp_path, tracking_uri), "progress_bar=auto"]  # auto: output not a terminal
    prepare_dataset(compose(["experiment=quickstart", *overrides]).data, log=lambda line: None)
    result = run_train("experiment=quickstart", "study=noise", *overrides)  # reuses that dataset
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout + result.stderr
    assert text.count("Seed set") == 0 and text.count("reusing prepared dataset") == 1
    assert "LeafSpec" not in text and "Creating it" not in text
    assert "epoch 1/1: loss/train" in result.stdout  # progress lines when the output is not a terminal


def test_version_is_printed(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_info:
        cli(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"nucleiseg {version('nucleiseg')}"


def test_resuming_refuses_a_planted_payload_even_when_torch_is_told_to_unpickle(
    train_overrides, tracking_uri, tmp_path, monkeypatch
):
    import nucleiseg.models.lit_module as lit_module

    cfg = compose(train_overrides + ["study=planted", "trainer.max_epochs=3"])
    original = lit_module.SegmentationModule.on_train_epoch_end

    def killed_in_the_second_epoch(self):  # after the first epoch's checkpoint
        original(self)
        if self.current_epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(lit_module.SegmentationModule, "on_train_epoch_end", killed_in_the_second_epoch)
    with pytest.raises(SystemExit):
        main(cfg)
    monkeypatch.setattr(lit_module.SegmentationModule, "on_train_epoch_end", original)
    last = run_folder(cfg) / "checkpoints" / "last.ckpt"
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    planted = torch.load(last, weights_only=False)
    planted["evil"] = Payload()
    last.write_bytes(pickle.dumps(planted))
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(SystemExit) as exit_info:
        main(cfg)
    assert exit_info.value.code == 2 and not marker.exists()
    [record] = _runs(tracking_uri, "planted")
    assert "cannot be loaded safely to resume" in record.data.tags["failure_reason"]


def test_two_prepares_never_interleave_and_damage_is_rebuilt(tmp_path):
    from nucleiseg.data.prepare import load_manifest, lock_file, prepare_dataset, prepared_path
    from nucleiseg.util.locking import LockedError, exclusive

    cfg = compose(["data=synthetic", f"paths.root_dir={tmp_path}", "data.protocol.image_size=32"]).data
    target = prepared_path(cfg)
    target.parent.mkdir(parents=True)
    stale = target.parent / f".{target.name}.tmp-999999"
    stale.mkdir()  # left by a killed prepare
    with exclusive(lock_file(target), "test"), pytest.raises(LockedError, match="pid"):
        prepare_dataset(cfg, log=lambda line: None, wait=0.3)
    messages = []
    folder = prepare_dataset(cfg, log=messages.append)
    assert not stale.exists() and (folder / "manifest.json").is_file()
    images = np.load(folder / "train" / "images.npy")
    images[0, 0, 0, 0] ^= 0xFF
    np.save(folder / "train" / "images.npy", images)  # damaged after preparation
    prepare_dataset(cfg, log=messages.append)
    assert any("does not match its manifest" in m for m in messages)
    assert np.load(folder / "train" / "images.npy")[0, 0, 0, 0] != images[0, 0, 0, 0]
    assert load_manifest(folder)["content_hash"]


def test_training_again_on_purpose_does_not_count_a_seed_twice(train_overrides, tracking_uri, tmp_path):
    from nucleiseg.tracking.report import write_report

    run(compose(train_overrides + ["study=twice"]))
    run(compose(train_overrides + ["study=twice", "skip_finished=false"]))
    assert len(_runs(tracking_uri, "twice")) == 2  # both kept in MLflow, for the record
    report = write_report(tracking_uri, "twice", tmp_path / "report", summary_runs=False)
    table = (report / "table3_metrics.csv").read_text().splitlines()
    assert len(table) == 2 and ",1,0,0,0," in table[1]  # n=1: the superseded run is out of the counts


@pytest.mark.parametrize(
    ("foreground", "expected"),
    [
        ({"value": 128}, 2),  # {0, 128}: binary
        ({"rgb": (255, 0, 0)}, 2),  # red on black: binary
        ({"value": 255, "stray": 254}, 2),  # binary with a stray value on a few pixels
    ],
)
def test_binary_masks_are_detected_whatever_their_foreground(tmp_path, foreground, expected, caplog):
    mask = np.zeros((40, 40), np.uint8)
    mask[5:12, 5:12] = mask[20:30, 20:30] = foreground.get("value", 1)
    if "stray" in foreground:
        mask[22, 22] = foreground["stray"]
    if "rgb" in foreground:
        rgb = np.zeros((40, 40, 3), np.uint8)
        rgb[mask > 0] = foreground["rgb"]
        Image.fromarray(rgb).save(tmp_path / "mask.png")
    else:
        Image.fromarray(mask).save(tmp_path / "mask.png")
    labels = read_mask(tmp_path / "mask.png")
    assert labels.max() == expected  # two nuclei, not one merged, not one per grey level
    if "stray" in foreground:
        assert "stray value" in caplog.text


def test_lossy_masks_are_refused(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "mask.jpg")
    with pytest.raises(ImageReadError, match="JPEG mask is lossy"):
        read_mask(tmp_path / "mask.jpg")


def test_12_bit_and_cmyk_images_are_read_as_what_they_show(tmp_path, caplog):
    import logging

    import tifffile

    caplog.set_level(logging.INFO, logger="nucleiseg")  # the scaling is said at INFO, whatever ran before

    twelve_bit = np.full((8, 8, 3), 4095, np.uint16)
    twelve_bit[0, 0] = 0
    tifffile.imwrite(tmp_path / "camera.tif", twelve_bit, photometric="rgb")
    image = read_rgb(tmp_path / "camera.tif")
    assert image[1, 1, 0] == 255 and image[0, 0, 0] == 0  # white stays white, not near-black
    assert "12-bit" in caplog.text
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "print.jpg")  # red in CMYK
    rgb = read_rgb(tmp_path / "print.jpg")
    assert rgb.shape == (8, 8, 3) and rgb[4, 4, 0] > 200 and rgb[4, 4, 1] < 60
    assert "CMYK image converted to RGB" in caplog.text


def test_an_aperio_region_with_a_huge_vertex_count_is_refused_quickly(tmp_path):

    from nucleiseg.data.aperio_xml import read_regions
    from nucleiseg.util.errors import AnnotationError

    vertices = "".join(f'<Vertex X="{i % 100}" Y="{i // 100}"/>' for i in range(200_000))
    (tmp_path / "big.xml").write_text(
        f'<Annotations><Annotation><Regions><Region Id="7"><Vertices>{vertices}</Vertices></Region>'
        "</Regions></Annotation></Annotations>"
    )
    with pytest.raises(AnnotationError, match="big.xml: region 7 has more than 10000 vertices"):
        read_regions(tmp_path / "big.xml")


def test_bad_values_are_one_line_errors_before_any_work(train_overrides, tmp_path, capsys):
    for override, expected in (
        ("data.loader.batch_size=0", "data.loader.batch_size=0"),
        ("data.protocol.image_size=0", "data.protocol.image_size=0"),
        ("data.protocol.image_size=60", "multiple of 16"),
        ("optimizer.lr=abc", "optimizer.lr='abc'"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(compose(train_overrides + ["study=badvalues", override]))
        assert exit_info.value.code == 2 and expected in capsys.readouterr().err
    assert (
        not (tmp_path / "outputs").exists()
        and not (tmp_path / "data").exists()
        and not (tmp_path / "mlflow.db").exists()
    )


def test_bad_predict_options_are_refused(trained_run, tmp_path, capsys):
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(tmp_path / "tile.png")
    base = ["predict", str(tmp_path / "tile.png"), "--out", str(tmp_path / "out"), "--checkpoint", str(trained_run[3])]
    for option, expected in (
        (["--tile-size", "-32"], "predict.tile_size=-32"),
        (["--scale", "0"], "predict.scale=0"),
        (["--mpp", "0"], "predict.microns_per_pixel (--mpp)=0"),
        (["--mpp", "-1"], "predict.microns_per_pixel (--mpp)=-1.0"),
    ):
        assert cli([*base, *option]) == 2
        assert expected in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_input_named_dots_stays_inside_out(trained_run, tmp_path):
    from nucleiseg.inference.session import InferenceSession
    from nucleiseg.predict.run import LOCK, predict

    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(folder / "...png", format="PNG")
    session = InferenceSession.from_checkpoint(trained_run[3], defaults("predict", tile_size=64))
    summary = predict([folder / "...png"], tmp_path / "out", session, progress="none")
    assert summary.ok
    written = [p for p in (tmp_path / "out").iterdir() if p.name != LOCK]  # (the folder's lock stays, as training's)
    assert len(written) == 1 and written[0].parent == tmp_path / "out" and written[0].name.startswith("image-")
    assert not (tmp_path / "done.json").exists()


def test_a_zero_byte_checkpoint_is_named(tmp_path):
    from nucleiseg.inference.checkpoint import CheckpointError, load_checkpoint

    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.ckpt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "empty.ckpt")


def test_a_run_killed_before_its_first_checkpoint_keeps_one_mlflow_run(train_overrides, tracking_uri):
    """SIGKILL before the first checkpoint left a RUNNING MLflow run and run.json; the re-run continues that
    MLflow run instead of opening a second one."""
    from nucleiseg.tracking.mlflow_store import use_experiment
    from nucleiseg.training.identity import identity_hash, run_name
    from nucleiseg.util.writing import write_json_atomic

    cfg = compose(train_overrides + ["study=sigkill"])
    use_experiment(tracking_uri, "sigkill", str(run_folder(cfg).parent / "artifacts"))
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("sigkill").experiment_id
    stale = client.create_run(experiment, run_name=run_name(cfg)).info.run_id  # RUNNING, as SIGKILL left it
    write_json_atomic(
        run_folder(cfg) / "run.json", {"run_id": stale, "identity": identity_hash(cfg), "name": run_name(cfg)}
    )
    run(cfg)
    [only] = _runs(tracking_uri, "sigkill")
    assert only.info.run_id == stale and only.info.status == "FINISHED"


def test_a_corrupt_run_json_is_named(train_overrides):
    cfg = compose(train_overrides + ["study=corruptjson"])
    folder = run_folder(cfg)
    folder.mkdir(parents=True)
    (folder / "run.json").write_text("{not json")
    with pytest.raises(ConfigError, match="run.json: not readable as JSON"):
        run(cfg)


def test_evaluate_refuses_two_masks_sharing_a_name(trained_run, tmp_path):
    from nucleiseg.evaluation.evaluate import folder_pairs
    from nucleiseg.util.errors import DatasetLayoutError

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "masks" / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "masks" / "a.tif")
    with pytest.raises(DatasetLayoutError, match="two masks named a"):
        folder_pairs(tmp_path / "images", tmp_path / "masks")


def _run_with_pending(tmp_path, tracking_uri, run_id, lines):
    import json

    folder = tmp_path / "run"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"run_id": run_id}))
    (folder / "mlflow_pending.jsonl").write_text("\n".join(lines))
    return folder


def test_relog_replays_what_parses_and_names_a_store_without_the_run(tmp_path, tracking_uri, capsys):
    import json

    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("relog_bad_day")
    run_id = client.create_run(experiment).info.run_id
    good = [
        json.dumps({"kind": "metrics", "time": 1.0, "step": 0, "metrics": {"loss/train": 0.5}}),
        json.dumps({"kind": "tags", "tags": {"kept": "yes"}}),
    ]
    folder = _run_with_pending(tmp_path, tracking_uri, run_id, [*good, '{"kind": "metrics", "time": 2.0, "met'])
    assert cli(["relog", str(folder), f"logger.tracking_uri={tracking_uri}"]) == 0
    recorded = client.get_run(run_id).data
    assert recorded.metrics["loss/train"] == 0.5 and recorded.tags["kept"] == "yes"
    assert "could not be read" in capsys.readouterr().err
    elsewhere = _run_with_pending(tmp_path / "other", tracking_uri, "0" * 32, good)
    assert cli(["relog", str(elsewhere), f"logger.tracking_uri={tracking_uri}"]) == 2
    err = capsys.readouterr().err
    assert "is not in the tracking store" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert (elsewhere / "mlflow_pending.jsonl").is_file()  # kept for the right store


def test_a_greyscale_slide_still_finds_its_tissue_and_says_why_nuclei_may_be_missed(tmp_path, caplog):
    import json
    import logging

    from nucleiseg.data.synthetic_slide import synthetic_pool, tissue_content, write_slide
    from nucleiseg.predict.run import predict
    from tests.slides.test_slides import oracle_session

    grey = [
        np.repeat(tile.mean(axis=-1, keepdims=True), 3, axis=-1).astype(np.uint8) for tile in synthetic_pool(128, 4)
    ]
    box = (400, 300, 1000, 800)
    path = write_slide(tmp_path / "grey.tif", 1600, 1200, tissue_content(grey, [box]), mpp=0.5)
    settings = defaults("slide", window=256, margin=32, thumbnail=400, min_tissue=0.05)
    with caplog.at_level(logging.WARNING, logger="nucleiseg"):
        summary = predict([path], tmp_path / "out", oracle_session(), progress="none", slide_settings=settings)
    assert summary.ok and "greyscale slide" in caplog.text
    info = json.loads((tmp_path / "out" / "grey" / "slide.json").read_text())
    expected = (box[2] - box[0]) * (box[3] - box[1]) / (1600 * 1200)
    assert abs(info["tissue_fraction"] - expected) < 0.04 and info["windows_with_tissue"] > 0
