"""Time to first frame of ``recon view`` in headless Chromium (WebGL2 on SwiftShader, i.e. the
CPU), for a 100k-Gaussian capture and a 256^3 CT volume; the time to the printed URL; and the
size of the built client.

    python scripts/bench_viewer.py [--repeats 3] [--out runs/bench-viewer] [--screenshots docs/img]

Runs are synthetic (``recon_viewer.synthetic``): the capture has 100,000 Gaussians of SH degree
3 (the most a PLY carries) and 8 cameras; the CT run a 256^3 attenuation volume with its
reference and a 60-view cone-beam geometry. "First frame" is the client's
``window.__viewer.firstFrameMs``: from navigation start until the first frame drawn with the
model (Spark has loaded and depth-sorted the splats) or the reconstruction (niivue has loaded it
and drawn the planes and the 3D render; the reference beside it is loaded next, and the time
until both show is reported too). Each repeat is a fresh server (so HU conversion is included) and a
fresh browser context, at a 1280x900 window.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "viewer")]  # a source checkout works without reinstalling

from recon_viewer import start
from recon_viewer.headless import CHROMIUM_ARGS, chromium_path, first_frame_ms
from recon_viewer.synthetic import write_capture_run, write_ct_run


def asset_sizes() -> tuple[int, int]:
    """(bytes, gzip -9 bytes) of the built client."""
    static = ROOT / "viewer" / "recon_viewer" / "static"
    raw = packed = 0
    for path in static.iterdir():
        data = path.read_bytes()
        raw += len(data)
        packed += len(gzip.compress(data, 9))
    return raw, packed


def time_to_url(args: list[str]) -> float:
    """Seconds from process start to the printed URL."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in (".", "plugins", "viewer"))}
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, *args, "--port", "0", "--no-browser"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        elapsed = time.monotonic() - t0
        if "http://" not in line:
            raise RuntimeError(f"no URL from {args}: {line!r} {proc.stderr.read()}")
        return elapsed
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


def first_frames(browser, run: Path, query: str, repeats: int) -> tuple[list[float], dict]:
    times, marks = [], {}
    for _ in range(repeats):
        server = start([str(run)], port=0).serve_in_thread()
        context = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
        page = context.new_page()
        try:
            page.goto(server.url + query)
            times.append(first_frame_ms(page))
            page.evaluate("() => window.__viewer.settled(500, 300000)")  # CT: until the reference shows too
            marks = page.evaluate("() => window.__viewer.marks")
        finally:
            context.close()
            server.close()
    return times, marks


def screenshots(browser, capture: Path, ct: Path, folder: Path) -> None:
    """Page screenshots of both modes (README / docs): a camera clicked, and the CT planes."""
    folder.mkdir(parents=True, exist_ok=True)
    server = start([str(capture), str(ct)], port=0).serve_in_thread()
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, device_scale_factor=1)
    page = context.new_page()
    try:
        page.goto(server.url + "?run=0")
        first_frame_ms(page)
        page.click("[data-view='eval_000.jpg']")
        page.evaluate("() => window.__viewer.settled(800, 120000)")
        page.screenshot(path=str(folder / "viewer-capture.jpg"), type="jpeg", quality=80, full_page=True)
        page.goto(server.url + "?run=1&layout=mpr&preset=soft")
        first_frame_ms(page)
        page.evaluate("() => window.__viewer.settled(800, 300000)")
        page.screenshot(path=str(folder / "viewer-ct.jpg"), type="jpeg", quality=80, full_page=True)
    finally:
        context.close()
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-viewer")
    parser.add_argument("--screenshots", type=Path, default=None, help="also save a page screenshot of each mode here")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    capture = args.out / "capture-100k"
    ct = args.out / "ct-256"
    if not (capture / "run.json").is_file():
        print("writing the 100k-Gaussian capture run...", flush=True)
        write_capture_run(capture, n_gaussians=100_000, n_train=6, n_eval=2, image_size=96, sh_degree=3)
    if not (ct / "run.json").is_file():
        print("writing the 256^3 CT run (a minute: gzip of two 64 MB volumes)...", flush=True)
        write_ct_run(ct, shape_zyx=(256, 256, 256), fov_mm=350.0, n_views=60)
    exe = chromium_path()
    if exe is None:
        raise SystemExit("error: Debian chromium not found (apt-get install chromium)")
    shots = args.screenshots
    results = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
        version = browser.version
        results["capture_100k_ms"], results["capture_marks"] = first_frames(browser, capture, "", args.repeats)
        results["ct_256_ms"], results["ct_marks"] = first_frames(browser, ct, "?layout=mpr&preset=lung", args.repeats)
        if shots is not None:
            screenshots(browser, capture, ct, shots)
        browser.close()
    results["url_module_s"] = [time_to_url(["-m", "recon_viewer", str(capture)]) for _ in range(args.repeats)]
    results["url_recon_view_s"] = [time_to_url(["-m", "recon.cli", "view", str(capture)]) for _ in range(args.repeats)]
    raw, packed = asset_sizes()
    results.update(assets_bytes=raw, assets_gzip_bytes=packed, chromium=version, volume_bytes=(ct / "volume.nii.gz").stat().st_size, ply_bytes=(capture / "splat.ply").stat().st_size)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))

    med = statistics.median
    print(f"\nChromium {version} headless, SwiftShader (CPU) WebGL2, {os.cpu_count()} CPU cores, 1280x900 window")
    print("| what | median | runs |")
    print("|---|---|---|")
    print(f"| first frame, 100k Gaussians (SH 3, {results['ply_bytes'] / 1e6:.1f} MB PLY) | {med(results['capture_100k_ms']) / 1000:.1f} s | {', '.join(f'{t / 1000:.1f}' for t in results['capture_100k_ms'])} |")
    print(f"| first frame, 256^3 volume (planes + 3D; the reference follows) | {med(results['ct_256_ms']) / 1000:.1f} s | {', '.join(f'{t / 1000:.1f}' for t in results['ct_256_ms'])} |")
    print(f"| URL printed, python -m recon_viewer | {med(results['url_module_s']):.2f} s | {', '.join(f'{t:.2f}' for t in results['url_module_s'])} |")
    print(f"| URL printed, recon view | {med(results['url_recon_view_s']):.2f} s | {', '.join(f'{t:.2f}' for t in results['url_recon_view_s'])} |")
    print(f"| built client | {raw / 1e6:.2f} MB ({packed / 1e6:.2f} MB gzip) | |")
    ct_both = results["ct_marks"].get("ct:loaded")
    if ct_both:
        print(f"| (last run) reconstruction and reference both shown | {ct_both / 1000:.1f} s | |")
    print(f"\nwhere the time goes (ms from navigation start): capture {results['capture_marks']}, CT {results['ct_marks']}")


if __name__ == "__main__":
    main()
