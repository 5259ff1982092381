"""MONAI Label serving of the mdm_glas bundle (stock server + stock monaibundle app), on 127.0.0.1 only.

Needs the label environment (``.ci/label.sh`` builds ``.venv-label`` from requirements-label.txt and runs this file);
skipped where ``monailabel`` is not installed, e.g. in the core venv. ``MDM_LABEL_BUNDLE`` may name a trained bundle
folder (configs/ + models/model.pt); otherwise the test saves an untrained ``network_def`` into a copy of the bundle.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np
import pytest

pytest.importorskip("monailabel", reason="monailabel is not installed here: run .ci/label.sh (it builds .venv-label)")

import torch  # noqa: E402
from monailabel.client import MONAILabelClient  # noqa: E402
from monailabel.client.client import MONAILabelClientException  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLE = os.path.join(ROOT, "bundles", "mdm_glas")
MODEL = "mdm_glas"
STARTUP_S, REQUEST_S = 180, 120
BURST = 6


def _env(home):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["OMP_NUM_THREADS"] = "1"
    env["HOME"] = str(home)  # MONAI Label keeps sessions and caches under $HOME/.cache: keep them in tmp
    return env


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _untrained_bundle(dst):
    """A standalone copy of the bundle's configs (shared recipe resolved) with an untrained network_def as
    models/model.pt (+ model_settings.json)."""
    from monai.bundle import ConfigParser

    from mdm_med.bundle import export_bundle

    export_bundle(BUNDLE, dst, parts=("configs",))
    (dst / "models").mkdir()
    settings = {"preset": "cpu", "seg_mode": "finetune", "num_classes": 2, "image_scale": 0.5, "crop_size": 64,
                "patch_size": 4, "seg_timestep": 50}
    (dst / "models" / "model_settings.json").write_text(json.dumps(settings))
    parser = ConfigParser()
    parser.read_config(str(dst / "configs" / "inference.json"))
    parser["bundle_root"] = str(dst)
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), dst / "models" / "model.pt")
    return dst


def _studies(dst):
    """Two small synthetic H&E-like PNGs (not 64-divisible, to exercise padding and inversion)."""
    from mdm_med.data.synthetic import generate_glas_demo

    demo = generate_glas_demo(dst.parent / "demo_src", num_train=1, num_test=2, size=(120, 150), seed=4)
    dst.mkdir()
    for i in (1, 2):
        shutil.copy(os.path.join(demo, f"testA_{i}.png"), dst / f"case{i}.png")
    return dst


def _info(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/info/", timeout=5) as r:
        return json.loads(r.read())


def _stop(proc):
    """Stop the server's whole process group: SIGTERM, then SIGKILL; returns the pids still alive (none)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    time.sleep(0.5)
    alive = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
    for pid in alive:  # stragglers of this group only
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    return alive


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("label")
    bundle = os.environ.get("MDM_LABEL_BUNDLE") or str(_untrained_bundle(tmp / MODEL))
    studies = _studies(tmp / "studies")
    home = tmp / "home"
    home.mkdir()
    port = _free_port()
    log = open(tmp / "server.log", "w")
    cmd = [sys.executable, "-m", "mdm_med.label", "serve", "--bundle", bundle, "--studies", str(studies),
           "--port", str(port), "--app_dir", str(tmp / "app")]
    proc = subprocess.Popen(cmd, cwd=tmp, env=_env(home), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(REQUEST_S)  # the client's HTTPConnection has no timeout of its own
    try:
        start = time.monotonic()
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{(tmp / 'server.log').read_text()[-4000:]}")
            try:
                info = _info(port)
                break
            except OSError:
                if time.monotonic() - start > STARTUP_S:
                    pytest.fail(f"no /info/ after {STARTUP_S} s:\n{(tmp / 'server.log').read_text()[-4000:]}")
                time.sleep(0.5)
        startup = time.monotonic() - start
        print(f"MONAI Label answered /info/ after {startup:.1f} s")
        client_dir = tmp / "client"
        client_dir.mkdir()
        yield {"proc": proc, "port": port, "info": info, "bundle": bundle, "studies": studies, "tmp": tmp,
               "client": MONAILabelClient(f"http://127.0.0.1:{port}", tmpdir=str(client_dir)), "startup": startup}
    finally:
        socket.setdefaulttimeout(old_timeout)
        alive = _stop(proc)
        log.close()
        assert not alive, f"processes left running after stopping the server: {alive}"


@pytest.fixture(scope="module")
def local_masks(served, tmp_path_factory):
    """The bundle's own inference (``python -m monai.bundle run --config_file .../inference.json``) per image."""
    out = tmp_path_factory.mktemp("local_pred")
    bundle = served["bundle"]
    config = os.path.join(bundle, "configs", "inference.json")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, "--bundle_root", bundle,
           "--dataset_dir", str(served["studies"]), "--output_dir", str(out)]
    proc = subprocess.run(cmd, cwd=out, env=_env(served["tmp"] / "home"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    masks = {p.stem: np.asarray(Image.open(out / f"{p.stem}_seg.png")) for p in served["studies"].glob("case*.png")}
    print("foreground fraction of the local masks:", {k: round(float(m.mean()), 3) for k, m in masks.items()})
    assert all(0 < m.mean() < 1 for m in masks.values()), "constant masks would make the comparisons trivial"
    return masks


def _mask(path):
    assert path and os.path.isfile(path), f"no result file: {path}"
    return np.asarray(Image.open(path))


def _check_mask(mask, image_path):
    h, w = np.asarray(Image.open(image_path)).shape[:2]
    assert mask.shape == (h, w), f"mask {mask.shape} vs image {(h, w)}"
    assert set(np.unique(mask).tolist()) <= {0, 1}


def test_info_lists_the_bundle(served):
    model = served["info"]["models"][MODEL]
    assert model["type"] == "segmentation" and model["dimension"] == 2 and model["labels"] == {"gland": 1}
    assert served["info"]["datastore"]["total"] == 2


def test_infer_by_image_id_matches_local_bundle_inference(served, local_masks):
    for case in ("case1", "case2"):
        result, params = served["client"].infer(MODEL, case, {})
        mask = _mask(result)
        _check_mask(mask, served["studies"] / f"{case}.png")
        assert params["label_names"] == {"gland": 1}
        np.testing.assert_array_equal(mask, local_masks[case])


def test_infer_by_upload_matches_local_bundle_inference(served, local_masks):
    upload = served["tmp"] / "upload_case1.png"
    shutil.copy(served["studies"] / "case1.png", upload)
    result, _ = served["client"].infer(MODEL, "", {}, file=str(upload))
    mask = _mask(result)
    _check_mask(mask, upload)
    np.testing.assert_array_equal(mask, local_masks["case1"])


def test_corrupt_upload_is_an_error_and_the_server_survives(served):
    bad = served["tmp"] / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    with pytest.raises(MONAILabelClientException):
        served["client"].infer(MODEL, "", {}, file=str(bad))
    assert served["proc"].poll() is None, "the server died on a corrupt upload"
    assert MODEL in _info(served["port"])["models"]


def test_concurrent_burst_loses_nothing(served, local_masks):
    cases = [f"case{1 + i % 2}" for i in range(BURST)]
    with ThreadPoolExecutor(max_workers=BURST) as pool:
        futures = [pool.submit(served["client"].infer, MODEL, c, {}) for c in cases]
        done, pending = wait(futures, timeout=REQUEST_S * 2)
        for f in pending:
            f.cancel()
        assert not pending, f"{len(pending)} of {BURST} requests did not finish"
    results = [f.result()[0] for f in futures]
    assert len(set(results)) == BURST, "two requests got the same result file"
    for case, result in zip(cases, results):
        np.testing.assert_array_equal(_mask(result), local_masks[case])
    assert served["proc"].poll() is None
