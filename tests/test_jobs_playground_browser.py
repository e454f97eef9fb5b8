"""The playground's progress bar for a large image, in a real headless Chromium against a real
`dgae serve` with the bundled model: the page sends the decode to POST /v1/jobs/decode, polls the
job, shows a progress bar that only moves forward, and then shows the job's result (the same
reconstruction checks as a synchronous decode: PSNR recomputed here). The screenshot of the bar
mid-run is docs/jobs-progress.png when DGAE_DOCS_SCREENSHOTS is set (else the test's tmp dir)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from playground_browser import ConsoleLog, browser_unavailable, launch, psnr, rgb, sync_playwright
from service_cases import API_KEY, serve
from test_playground_browser import SAMPLES, path_of, photo_file, wait_state

pytestmark = [pytest.mark.server, pytest.mark.skipif(browser_unavailable() is not None,
                                                     reason=browser_unavailable() or "")]

LARGE_SIZE = (640, 448)  # over the page's JOB_MIN_PIXELS (512²): 3 x 2 decode tiles x 2 steps
OP_TIMEOUT_MS = 600_000  # a tiled decode on a shared 2-core CPU
DOCS_ENV = "DGAE_DOCS_SCREENSHOTS"
DOCS_SHOT = Path(__file__).resolve().parent.parent / "docs" / "jobs-progress.png"
MIN_PSNR_DB = 15.0  # a reconstruction, not noise
SHOT_AT_FRACTION = 0.4  # the screenshot shows the bar this far along


@pytest.fixture(scope="module")
def server(tmp_path_factory, request):
    from dgae.checkpoint import BUNDLED_CHECKPOINT

    checkpoint = BUNDLED_CHECKPOINT if BUNDLED_CHECKPOINT.is_file() else request.getfixturevalue("tiny_checkpoint")
    work = tmp_path_factory.mktemp("jobs-playground")
    flags = ["--api-keys", API_KEY, "--torch-threads", "1", "--jobs-dir", str(work / "jobs")]
    with serve(checkpoint, work, *flags) as s:
        yield s


def test_large_image_decodes_as_a_job_with_a_progress_bar(server, tmp_path):
    assert (SAMPLES / "coffee.jpg").is_file()
    photo = photo_file(tmp_path, "large.png", LARGE_SIZE)
    with sync_playwright() as p:
        browser = launch(p)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(OP_TIMEOUT_MS)
        page = context.new_page()
        log = ConsoleLog(page)
        page.goto(server.url + "/")
        wait_state(page, "auth")
        page.fill("#api-key", API_KEY)
        page.press("#api-key", "Enter")
        wait_state(page, "ready")
        values = []
        with page.expect_response(lambda r: path_of(r.url) == "/v1/jobs/decode") as submitted, \
                page.expect_response(lambda r: path_of(r.url).endswith("/result")) as result:
            page.set_input_files("#file", str(photo))
            page.wait_for_function("f => { const bar = document.getElementById('job-progress'); return "
                                   "document.body.dataset.jobState === 'running' && bar.value >= f * bar.max; }",
                                   arg=SHOT_AT_FRACTION)
            shot = DOCS_SHOT if os.environ.get(DOCS_ENV) else tmp_path / DOCS_SHOT.name
            page.screenshot(path=str(shot), full_page=False)
            while page.get_attribute("body", "data-state") == "busy":
                values.append(float(page.eval_on_selector("#job-progress", "e => e.value / e.max")))
                page.wait_for_timeout(250)
        assert submitted.value.status == 202
        assert page.get_attribute("body", "data-state") == "done", page.inner_text("#error")
        assert values == sorted(values) and values[-1] <= 1.0
        assert page.get_attribute("body", "data-job-state") == "done"
        assert page.eval_on_selector("#job-progress", "e => e.value === e.max")
        body = result.value.body()
        assert result.value.headers["content-type"] == "image/png"
        assert psnr(rgb(photo.read_bytes()), rgb(body)) > MIN_PSNR_DB
        assert "network passes" in page.inner_text("#job-text")
        log.assert_clean()
        browser.close()
