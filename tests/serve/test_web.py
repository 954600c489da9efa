"""The web page end to end in a real headless Chromium (Debian's), driven by Playwright."""

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionllm.serve.app import ServerSettings, create_app

pytestmark = pytest.mark.slow

ARTIFACTS = Path(os.environ.get("VISIONLLM_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))
# Without the background-networking flags Chromium keeps dialling Google's hosts, which this network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail(
            "no Chromium found: install it with `apt-get install -y chromium` (make test does), or set CHROMIUM"
        )
    return path


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@contextmanager
def opened(browser, live_server, app):
    """The app served and its page loaded in a new tab; no console error other than 4xx answers on closing."""
    with live_server(app) as url:
        tab = browser.new_page(viewport={"width": 1400, "height": 900})
        console_errors = []
        tab.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
        tab.goto(url)
        tab.wait_for_selector("body[data-state=ready]", timeout=30_000)
        yield tab
        tab.close()
        assert not [e for e in console_errors if "status of 4" not in e], console_errors


@pytest.fixture(scope="module")
def page(shipped_model, live_server, browser):
    app = create_app(shipped_model, ServerSettings(model_id="visionllm-v1-tiny", samples=6))
    with opened(browser, live_server, app) as tab:
        yield tab


def overlay_fraction(tab) -> float:
    """Fraction of the result picture's pixels that differ from the plain input drawn at the same size."""
    return tab.evaluate(
        """() => {
        const result = document.getElementById("result-image"), input = document.getElementById("input-image");
        const w = result.naturalWidth, h = result.naturalHeight;
        const draw = (img, width, height) => {
            const c = document.createElement("canvas"); c.width = w; c.height = h;
            const g = c.getContext("2d"); g.imageSmoothingEnabled = false; g.drawImage(img, 0, 0, width, height);
            return g.getImageData(0, 0, w, h).data;
        };
        const a = draw(result, w, h), b = draw(input, w, w * input.naturalHeight / input.naturalWidth);
        let changed = 0;
        for (let i = 0; i < a.length; i += 4) {
            if (Math.abs(a[i] - b[i]) + Math.abs(a[i + 1] - b[i + 1]) + Math.abs(a[i + 2] - b[i + 2]) > 90) changed++;
        }
        return changed / (w * h);
    }"""
    )


def test_page_loads_with_tasks_samples_and_the_model(page):
    assert page.inner_text("#model-id") == "visionllm-v1-tiny"
    options = page.eval_on_selector_all("#task option", "els => els.map(e => e.value)")
    assert options == ["detection", "instance_segmentation", "grounding", "keypoints", "caption", "vqa", "instruction"]
    assert page.locator("#samples img").count() == 6
    assert page.eval_on_selector("#input-image", "img => img.naturalWidth") > 0


def test_detection_draws_the_overlay_and_shows_the_json(page):
    page.select_option("#task", "detection")
    page.click("#run")
    page.wait_for_selector("body[data-state=done]", timeout=60_000)
    result = json.loads(page.inner_text("#raw-json"))
    assert result["task"] == "detection" and result["output"] == "detections"
    assert result["detections"], "the shipped model found nothing on the sample image"
    assert page.locator("#detections tbody tr").count() == len(result["detections"])
    assert page.inner_text("#answer").startswith(f"{len(result['detections'])} object")
    assert page.eval_on_selector("#result-image", "img => img.naturalWidth") >= 512
    assert overlay_fraction(page) > 0.003  # box outlines and labels are drawn over the picture
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web_page_detection.png"), full_page=True)


def test_caption_shows_the_text_answer(page):
    page.click("#samples img:nth-child(2)")
    page.select_option("#task", "caption")
    assert page.is_hidden("#classes")
    page.click("#run")
    page.wait_for_selector("body[data-state=done]", timeout=60_000)
    assert json.loads(page.inner_text("#raw-json"))["output"] == "text"
    assert len(page.inner_text("#answer").split()) >= 2
    assert page.is_hidden("#detections")


def test_upload_then_a_bad_request_shows_the_error_and_the_page_recovers(page, tmp_path):
    picture = tmp_path / "upload.png"
    Image.fromarray(np.full((90, 120, 3), 200, dtype=np.uint8)).save(picture)
    page.set_input_files("#upload", str(picture))
    page.wait_for_function("document.getElementById('input-image').naturalWidth === 120")
    page.select_option("#task", "detection")
    page.fill("#classes", " , ")
    page.click("#run")
    page.wait_for_selector("body[data-state=error]", timeout=60_000)
    assert "needs classes" in page.inner_text("#status")
    page.fill("#classes", "circle, square")
    page.click("#run")
    page.wait_for_selector("body[data-state=done]", timeout=60_000)
    assert json.loads(page.inner_text("#raw-json"))["image_size"] == [120, 90]


@pytest.fixture(scope="module")
def v2_page(micro_v2_model, live_server, browser):
    with opened(
        browser, live_server, create_app(micro_v2_model, ServerSettings(model_id="micro-v2", samples=2))
    ) as tab:
        yield tab


def test_prompts_drawn_on_the_canvas_are_sent_as_regions_in_image_pixels(v2_page):
    tab = v2_page
    tab.select_option("#task", "interactive_segmentation")
    assert tab.is_visible("#prompt-tools") and tab.is_hidden("#classes")
    side = tab.eval_on_selector("#input-image", "img => img.naturalWidth")
    box = tab.locator("#prompt-layer").bounding_box()
    at = lambda fx, fy: (box["x"] + fx * box["width"], box["y"] + fy * box["height"])  # noqa: E731
    tab.mouse.click(*at(0.25, 0.5))  # a point
    tab.click("#prompt-tools [data-tool=box]")
    tab.mouse.move(*at(0.5, 0.5))
    tab.mouse.down()
    tab.mouse.move(*at(0.75, 0.625), steps=4)
    tab.mouse.up()
    tab.click("#prompt-tools [data-tool=scribble]")
    tab.mouse.move(*at(0.1, 0.1))
    tab.mouse.down()
    for k in range(1, 5):
        tab.mouse.move(*at(0.1 + 0.05 * k, 0.1 + 0.02 * k))
    tab.mouse.up()
    assert tab.inner_text("#prompt-count") == "3 regions"
    drawn = tab.evaluate(
        """() => { const c = document.getElementById("prompt-layer");
        const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n / (c.width * c.height); }"""
    )
    assert drawn > 0.005  # the prompts are visible over the image
    with tab.expect_request("**/v1/predict") as sent:
        tab.click("#run")
    regions = sent.value.post_data_json["regions"]
    tab.wait_for_selector("body[data-state=done]", timeout=60_000)
    assert [r["kind"] for r in regions] == ["point", "box", "scribble"]
    assert regions[0]["data"] == pytest.approx([0.25 * side, 0.5 * side], abs=1.0)
    assert regions[1]["data"] == pytest.approx([0.5 * side, 0.5 * side, 0.75 * side, 0.625 * side], abs=1.0)
    assert len(regions[2]["data"]) >= 3
    result = json.loads(tab.inner_text("#raw-json"))
    assert result["task"] == "interactive_segmentation" and len(result["detections"]) == 1  # one mask, always
    assert result["detections"][0]["mask_rle"]["size"] == [side, side]
    assert tab.eval_on_selector("#result-image", "img => img.naturalWidth") >= 512
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / "web_page_prompts.png"), full_page=True)
    tab.click("#clear-prompts")
    assert tab.inner_text("#prompt-count") == "no region drawn"


def test_a_task_without_prompts_hides_the_tools(v2_page):
    v2_page.select_option("#task", "detection")
    assert v2_page.is_hidden("#prompt-tools")
    v2_page.select_option("#task", "instruction")
    assert v2_page.is_visible("#prompt-tools")  # a chat turn of a v2 model may carry regions


def shown_url(tab) -> str:
    return tab.eval_on_selector("#result-image", "img => img.complete && img.naturalWidth ? img.src : ''")


def test_a_generated_image_is_shown_then_edited_in_its_place(v2_page):
    tab = v2_page
    options = tab.eval_on_selector_all("#task option", "els => els.map(e => e.value)")
    assert {"generation", "editing"} <= set(options)
    tab.select_option("#task", "generation")
    assert tab.is_visible("#description") and tab.is_visible("#seed") and tab.is_hidden("#min-score")
    tab.fill("#description", "a red circle left of a blue square")
    tab.fill("#seed", "4")
    with tab.expect_request("**/v1/predict") as sent:
        tab.click("#run")
    assert "image" not in sent.value.post_data_json and sent.value.post_data_json["seed"] == 4
    tab.wait_for_selector("body[data-state=done]", timeout=60_000)
    tab.wait_for_function("document.getElementById('result-image').naturalWidth > 0")
    made = shown_url(tab)
    assert made.startswith("data:image/png;base64,")
    assert tab.eval_on_selector("#result-image", "img => [img.naturalWidth, img.naturalHeight]") == [16, 16]
    result = json.loads(tab.inner_text("#raw-json"))
    assert result["output"] == "image" and result["seed"] == 4 and result["image"].startswith("<image/png data URL")
    assert tab.is_visible("#edit-result")

    tab.fill("#result-edit", "make the red circle green")
    with tab.expect_request("**/v1/predict") as sent:
        tab.press("#result-edit", "Enter")
    edit = sent.value.post_data_json
    assert edit["task"] == "editing" and edit["edit"] == "make the red circle green" and edit["image"] == made
    tab.wait_for_selector("body[data-state=done]", timeout=60_000)
    tab.wait_for_function(f"document.getElementById('result-image').src !== {json.dumps(made)}")
    tab.wait_for_function("document.getElementById('result-image').naturalWidth > 0")
    edited = shown_url(tab)
    assert edited.startswith("data:image/png;base64,") and edited != made
    assert tab.eval_on_selector("#result-image", "img => [img.naturalWidth, img.naturalHeight]") == [16, 16]
    assert json.loads(tab.inner_text("#raw-json"))["task"] == "editing"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / "web_page_generation.png"), full_page=True)

    tab.click("#use-result")  # the edited image becomes the input of the next task
    tab.wait_for_function(f"document.getElementById('input-image').src === {json.dumps(edited)}")
    tab.select_option("#task", "editing")
    assert tab.is_visible("#edit") and tab.is_hidden("#description")
    tab.fill("#edit", "make the square red")
    with tab.expect_request("**/v1/predict") as sent:
        tab.click("#run")
    assert sent.value.post_data_json["image"] == edited
    tab.wait_for_selector("body[data-state=done]", timeout=60_000)
    assert json.loads(tab.inner_text("#raw-json"))["image_size"] == [16, 16]
