"""MLflow UI, seen: a small sweep in a fresh MLflow store, served by `mlflow server`, photographed by headless Chromium.

    python experiments/mlflow_ui_screenshots.py [--out-dir docs] [--store DIR] [--no-sweep] [-- layerlens.run overrides]

1. Runs a tiny-model sweep (baseline=lora,layerlens, seeds 0 and 1: 4 runs, a few minutes on 2 CPU cores) with its
   working folder in the store folder, so that mlflow.db, the runs' artifacts (mlruns/) and Hydra's multirun/ all land
   there.
   The store is a temporary folder, removed at the end (kept on failure, for its logs), unless --store names one
   (always kept; --no-sweep shows the latest sweep already in it).
2. Starts `mlflow server` on 127.0.0.1 on a free port against that store and waits for /health. The runs' artifacts are
   local paths under the store, which the server reads itself (`/get-artifact`), whatever --serve-artifacts says.
3. Finds the experiment and the sweep's runs with an MLflow client talking to the server, checks that a layerlens run's
   plan.png is served, then drives headless Chromium over the DevTools protocol (on a pipe: no port, no extra package):
   each page is loaded, waited for until its content is there (run names, plots, the decoded plan.png), and saved:
     <out-dir>/mlflow-compare.png        compare-runs page of the sweep's runs: plot of params and metrics, run details
     <out-dir>/mlflow-charts.png         the experiment's chart view of the val/ metrics, a line per run
     <out-dir>/mlflow-compare-plans.png  compare-runs page of the layerlens runs: run details, metrics, and their
                                         plan.png side by side
     <out-dir>/mlflow-plan-artifact.png  a layerlens run's Artifacts tab with plan.png (utility, allocation per layer)
   Each PNG is checked not to be a blank page (its colours).
4. Stops Chromium and the server (their whole process groups), on success, error or Ctrl-C alike.

Exits 2 with one line if Chromium is missing (Debian: apt-get install -y chromium), 1 with one line if the sweep fails,
the server does not come up or a page does not render.
"""

import argparse
import base64
import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXPERIMENT = "layerlens-mrpc"
SWEEP = ["model=tiny", "trainer=debug", "baseline=lora,layerlens", "seed=0,1", "trainer.enable_progress_bar=false"]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--hide-scrollbars",
    "--mute-audio",
]
WIDTH, HEIGHT = 1600, 1000
SERVER_START_S = 180.0
PAGE_RENDER_S = 120.0


class Failure(Exception):
    """A one-line reason to stop, printed as `error: ...`."""


def log(message: str) -> None:
    print(f"[mlflow-ui] {message}", file=sys.stderr, flush=True)


def last_line(path: Path) -> str:
    """The log's last error line (LayerLens's `error: ...`, a logger's ERROR, an exception), else its last line."""
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()] if path.exists() else []
    errors = [line for line in lines if re.search(r"^error:|\bERROR\b|^\w*(Error|Exception): ", line)]
    return (errors or lines or ["(empty log)"])[-1].strip()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_group(proc: subprocess.Popen | None, name: str, grace_s: float = 20.0) -> None:
    """SIGTERM to the process group that `proc` leads (started with start_new_session), SIGKILL after grace_s."""
    if proc is None:
        return
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            proc.poll()
            try:
                os.killpg(proc.pid, 0)  # anyone left in the group (workers outlive their parent for a moment)?
            except ProcessLookupError:
                log(f"{name} stopped")
                return
            time.sleep(0.2)
    proc.poll()


def run_sweep(store: Path, extra: list[str]) -> None:
    cmd = [sys.executable, "-m", "layerlens.run", "-m", *SWEEP, *extra]
    sweep_log = store / "sweep.log"
    log(f"sweep into {store}: {' '.join(cmd[1:])} (log: {sweep_log})")
    start = time.monotonic()
    with sweep_log.open("w") as out:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}"}
        rc = subprocess.run(cmd, cwd=store, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise Failure(f"the sweep failed (exit {rc}): {last_line(sweep_log)} (log: {sweep_log})")
    log(f"sweep done in {time.monotonic() - start:.0f} s")


def start_server(store: Path, port: int) -> subprocess.Popen:
    # One worker and no job runner (huey consumers): the UI needs neither, and this may share a small machine.
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{store / 'mlflow.db'}",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    server_log = store / "server.log"
    log(f"starting {' '.join(cmd[1:])} (log: {server_log})")
    with server_log.open("w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            cmd,
            cwd=store,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def wait_for_server(proc: subprocess.Popen, base: str, server_log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Failure(f"mlflow server exited ({proc.returncode}) before answering: {last_line(server_log)}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{base}/health", timeout=5) as response:
            if response.status == 200:
                return
        time.sleep(1.0)
    raise Failure(f"mlflow server did not answer {base}/health within {SERVER_START_S:.0f} s (log: {server_log})")


def find_runs(base: str):
    """The experiment and the runs of its latest sweep (tag `sweep`), through the server."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=base)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        raise Failure(f"no experiment {EXPERIMENT!r} in the store")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1000)
    if not runs:
        raise Failure(f"experiment {EXPERIMENT!r} has no runs")
    sweep = runs[0].data.tags.get("sweep")
    runs = sorted((r for r in runs if r.data.tags.get("sweep") == sweep), key=lambda r: r.info.run_name or "")
    planned = [r for r in runs if r.data.tags.get("baseline") == "layerlens" and r.info.status == "FINISHED"]
    if not planned:
        raise Failure(f"sweep {sweep!r} has no finished layerlens run (so no plan.png to show)")
    return experiment, sweep, runs, planned[0]


def check_artifact(base: str, run_id: str) -> None:
    query = urllib.parse.urlencode({"path": "plan.png", "run_uuid": run_id})
    with urllib.request.urlopen(f"{base}/get-artifact?{query}", timeout=30) as response:
        head = response.read(8)
    if head != b"\x89PNG\r\n\x1a\n":
        raise Failure(f"the server does not serve run {run_id}'s plan.png as a PNG")


def find_chromium(explicit: str | None) -> str:
    found = shutil.which(explicit) if explicit else next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    if not found:
        what = f"--chromium {explicit!r} is not an executable" if explicit else "Chromium is not installed"
        raise Failure(f"{what}: install it (Debian/Ubuntu: apt-get install -y chromium) or pass --chromium PATH", 2)
    return found


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: it reads commands on
    its descriptor 3 and writes answers on 4, each a JSON message ended by a NUL byte)."""

    def __init__(self, exe: str, profile: Path, log_path: Path):
        self.next_id, self.buffer, self.log_path = 0, b"", log_path
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()
        # Descriptors >= 5, moved onto 3 and 4 in the child (by a Python trampoline) without clobbering each other.
        child_r, child_w = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 5), fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 5)
        os.close(to_chrome_r), os.close(from_chrome_w)
        trampoline = (
            "import os, sys; r, w = int(sys.argv[1]), int(sys.argv[2]); os.dup2(r, 3); os.dup2(w, 4); "
            "os.close(r); os.close(w); os.execv(sys.argv[3], sys.argv[3:])"
        )
        cmd = [
            sys.executable,
            "-c",
            trampoline,
            str(child_r),
            str(child_w),
            exe,
            *CHROMIUM_FLAGS,
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            f"--window-size={WIDTH},{HEIGHT}",
            "about:blank",
        ]
        with log_path.open("w") as out:
            self.proc = subprocess.Popen(
                cmd,
                pass_fds=(child_r, child_w),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        os.close(child_r), os.close(child_w)
        self.call("Browser.getVersion", timeout_s=60)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout_s: float = 60) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout_s
        while True:
            while b"\0" in self.buffer:  # answers to this call, and events, which are dropped
                raw, self.buffer = self.buffer.split(b"\0", 1)
                answer = json.loads(raw)
                if answer.get("id") == self.next_id:
                    if "error" in answer:
                        raise Failure(f"Chromium: {method}: {answer['error'].get('message')}")
                    return answer.get("result", {})
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failure(f"Chromium did not answer {method} within {timeout_s:.0f} s (log: {self.log_path})")
            if select.select([self.from_chrome], [], [], min(left, 1.0))[0]:
                chunk = os.read(self.from_chrome, 1 << 20)
                if not chunk:
                    raise Failure(f"Chromium exited: {last_line(self.log_path)} (log: {self.log_path})")
                self.buffer += chunk

    @contextlib.contextmanager
    def tab(self, url: str, height: int = HEIGHT):
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        try:
            session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            tab = Tab(self, session, url)
            self.call(
                "Emulation.setDeviceMetricsOverride",
                {"width": WIDTH, "height": height, "deviceScaleFactor": 1, "mobile": False},
                session,
            )
            self.call("Page.navigate", {"url": url}, session)
            yield tab
        finally:
            self.call("Target.closeTarget", {"targetId": target})

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call("Browser.close", timeout_s=10)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        stop_group(self.proc, "chromium", grace_s=5.0)
        for fd in (self.to_chrome, self.from_chrome):
            with contextlib.suppress(OSError):
                os.close(fd)


# An element whose own text is exactly `text` (the UI's labels are leaf text in spans and divs).
def by_text(text: str) -> str:
    return (
        f"document.evaluate({json.dumps(f'//*[normalize-space(text())={json.dumps(text)}]')}, document, null, "
        "XPathResult.FIRST_ORDERED_NODE_TYPE, null).singleNodeValue"
    )


def text_has(*needles: str) -> str:
    return f"{json.dumps(list(needles))}.every(n => (document.body ? document.body.innerText : '').includes(n))"


def images_shown(count: int) -> str:
    return f"[...document.images].filter(i => i.complete && i.naturalWidth >= 400).length >= {count}"


# The MLflow Assistant side panel opens itself on a UI served from localhost; its close button shuts it.
CLOSE_ASSISTANT = (
    "(() => { const b = document.querySelector("
    "'[data-component-id=\"mlflow.assistant.chat_panel.close\"]'); if (b) b.click(); return true; })()"
)


class Tab:
    def __init__(self, browser: Chromium, session: str, url: str):
        self.browser, self.session, self.url = browser, session, url

    def evaluate(self, expression: str):
        result = self.browser.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, self.session)
        if "exceptionDetails" in result:
            raise Failure(f"Chromium: {expression[:80]!r} threw: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait(self, condition: str, what: str, timeout_s: float = PAGE_RENDER_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.evaluate(f"Boolean({condition})"):
            if time.monotonic() > deadline:
                text = self.evaluate("document.body ? document.body.innerText.slice(0, 160) : ''")
                raise Failure(f"{self.url}: no {what} within {timeout_s:.0f} s; the page shows {text!r}")
            time.sleep(0.5)

    def click_text(self, text: str) -> None:
        """A real mouse click (press and release) in the middle of the element labelled `text`."""
        box = self.evaluate(
            f"(() => {{ const e = {by_text(text)}; if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const b = e.getBoundingClientRect();"
            " return [b.x + b.width / 2, b.y + b.height / 2]; })()"
        )
        if not box:
            raise Failure(f"{self.url}: nothing labelled {text!r} to click")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.browser.call(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": box[0], "y": box[1], "button": "left", "clickCount": 1},
                self.session,
            )
        # The pointer moves off again, so that no hover highlight shows in the screenshot.
        self.browser.call("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": 1, "y": 1}, self.session)

    def type_into(self, selector: str, text: str) -> None:
        focus = f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e && e.focus(); return !!e; }})()"
        if not self.evaluate(focus):
            raise Failure(f"{self.url}: no {selector} to type into")
        self.browser.call("Input.insertText", {"text": text}, self.session)

    def scroll_to_top(self) -> None:
        self.evaluate("document.querySelectorAll('*').forEach(e => { if (e.scrollTop > 0) e.scrollTop = 0; })")

    def save(self, path: Path, settle_s: float = 3.0) -> str:
        time.sleep(settle_s)  # plots draw, and animate, after their data arrives
        data = self.browser.call("Page.captureScreenshot", {"format": "png"}, self.session, timeout_s=120)["data"]
        path.write_bytes(base64.b64decode(data))
        return check_png(path)


def check_png(path: Path) -> str:
    """Fails on a blank page; else rewrites the PNG with a 256-colour palette (a third of the size, alike to the eye).

    A page that rendered has many colours and is not mostly one flat colour; a blank or spinner page has neither."""
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB")
    small = rgb.resize((rgb.width // 4, rgb.height // 4))
    colours = small.getcolors(maxcolors=1 << 20)
    top_share = max(count for count, _ in colours) / (small.width * small.height)
    if len(colours) < 200 or top_share > 0.9:
        raise Failure(f"{path} looks blank ({len(colours)} colours, {top_share:.0%} one colour)")
    rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    return f"{rgb.width}x{rgb.height}, {len(colours)} colours, {path.stat().st_size // 1024} KiB"


def photograph(chromium_exe: str, base: str, experiment, runs, planned, out_dir: Path, work: Path) -> list[Path]:
    exp_id, names = experiment.experiment_id, [r.info.run_name for r in runs]
    layerlens = [r for r in runs if r.data.tags.get("baseline") == "layerlens" and r.info.status == "FINISHED"]
    ml = "workflowType=machine_learning"  # the classic ML views, not the GenAI ones (the UI's default for new visitors)

    def compare_url(some) -> str:
        ids = json.dumps([r.info.run_id for r in some], separators=(",", ":"))
        return (
            f"{base}/#/compare-runs?runs={urllib.parse.quote(ids)}"
            f"&experiments={urllib.parse.quote(json.dumps([exp_id]))}&{ml}"
        )

    browser = Chromium(chromium_exe, work / "chromium-profile", work / "chromium.log")
    shots = []

    def shot(name: str, tab: Tab, **kwargs) -> None:
        path = out_dir / name
        log(f"  {path}: {tab.save(path, **kwargs)}")
        shots.append(path)

    try:
        # (a) compare-runs, all the sweep's runs: plot of params and metrics by run, then run details.
        url = compare_url(runs)
        log(f"compare-runs page: {url}")
        with browser.tab(url) as tab:
            plot = "document.querySelector('.js-plotly-plot .main-svg')"
            tab.wait(f"{text_has(f'Comparing {len(runs)} Runs', *names)} && {plot}", "compare-runs page with its plot")
            tab.evaluate(CLOSE_ASSISTANT)
            shot("mlflow-compare.png", tab)
        # (a') the experiment's charts of the val/ metrics, every run a line.
        url = f"{base}/#/experiments/{exp_id}/runs?compareRunsMode=CHART&{ml}"
        log(f"experiment charts: {url}")
        search = 'input[placeholder="Search metric charts"]'
        with browser.tab(url) as tab:
            tab.wait(f"{text_has(*names)} && document.querySelector({json.dumps(search)})", "chart view")
            tab.evaluate(CLOSE_ASSISTANT)
            tab.type_into(search, "val/")
            tab.wait(
                f"{text_has('val/acc', 'val/f1')} && document.querySelectorAll('.js-plotly-plot').length >= 2",
                "val/ charts",
            )
            shot("mlflow-charts.png", tab)
        # (b) compare-runs of the layerlens runs with plan.png picked in the Artifacts section, and the Visualizations
        # and Parameters sections folded: run details, metrics, then the runs' plans side by side.
        url = compare_url(layerlens)
        log(f"compare-runs page, layerlens runs, plan.png: {url}")
        with browser.tab(url, height=1650) as tab:
            tab.wait(
                f"{text_has(*(r.info.run_name for r in layerlens), 'plan.png')} && {by_text('plan.png')}",
                "artifact list with plan.png",
            )
            tab.evaluate(CLOSE_ASSISTANT)
            tab.click_text("plan.png")
            tab.wait(images_shown(len(layerlens)), f"{len(layerlens)} plan.png images")
            folds = (("Visualizations", "Parallel Coordinates Plot"), ("Parameters", "baseline._target_"))
            for section, content in folds:
                tab.click_text(section)
                tab.wait(f"!{text_has(content)}", f"{section} section folded")
                time.sleep(1.0)  # the fold animates: the next header moves up meanwhile
            tab.scroll_to_top()
            shot("mlflow-compare-plans.png", tab)
        # (b') one layerlens run's Artifacts tab with plan.png open.
        url = f"{base}/#/experiments/{exp_id}/runs/{planned.info.run_id}/artifacts/plan.png?{ml}"
        log(f"run artifacts: {url}")
        with browser.tab(url) as tab:
            tab.wait(f"{text_has('plan.png', planned.info.run_name)} && {images_shown(1)}", "plan.png image")
            tab.evaluate(CLOSE_ASSISTANT)
            shot("mlflow-plan-artifact.png", tab)
    finally:
        browser.close()
    return shots


def interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=REPO / "docs", help="where the PNGs go (default: docs/)")
    parser.add_argument(
        "--store",
        type=Path,
        help="folder of the MLflow store (mlflow.db, mlruns/); kept. Default: a temporary folder, removed at the end",
    )
    parser.add_argument("--no-sweep", action="store_true", help="show the latest sweep already in --store")
    parser.add_argument("--port", type=int, help="server port (default: a free one)")
    parser.add_argument("--chromium", help="Chromium executable (default: chromium, chromium-browser or google-chrome)")
    parser.add_argument("overrides", nargs="*", help="extra layerlens.run overrides for the sweep (after --)")
    args = parser.parse_args(argv)
    if args.no_sweep and not (args.store and (args.store / "mlflow.db").exists()):
        parser.error("--no-sweep needs --store DIR holding an mlflow.db")

    # SIGTERM (and SIGHUP) unwind like Ctrl-C, so that the `finally` below stops the server and Chromium.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)
    start = time.monotonic()
    server, temporary, done = None, args.store is None, False
    store = Path(tempfile.mkdtemp(prefix="layerlens-mlflow-ui-")) if temporary else args.store.resolve()
    try:
        chromium_exe = find_chromium(args.chromium)  # before the sweep: fail in a second, not in minutes
        store.mkdir(parents=True, exist_ok=True)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        if not args.no_sweep:
            run_sweep(store, args.overrides)
        port = args.port or free_port()
        base = f"http://127.0.0.1:{port}"
        server = start_server(store, port)
        wait_for_server(server, base, store / "server.log")
        log(f"server up at {base}")
        experiment, sweep, runs, planned = find_runs(base)
        log(
            f"experiment {experiment.name} ({experiment.experiment_id}), sweep {sweep}: "
            + ", ".join(f"{r.info.run_name} {r.info.status}" for r in runs)
        )
        check_artifact(base, planned.info.run_id)
        work = Path(tempfile.mkdtemp(prefix="layerlens-chromium-"))
        try:
            shots = photograph(chromium_exe, base, experiment, runs, planned, args.out_dir.resolve(), work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        done = True
    except Failure as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return err.args[1] if len(err.args) > 1 else 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # an MLflow client or HTTP error: one line too
        print(f"error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}", file=sys.stderr)
        return 1
    finally:
        stop_group(server, "mlflow server")
        if temporary and done:
            shutil.rmtree(store, ignore_errors=True)
        elif temporary and any(store.iterdir()):
            log(f"kept the temporary store {store} for its logs")
        elif temporary:
            store.rmdir()
    for path in shots:
        print(path)
    log(f"done in {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
