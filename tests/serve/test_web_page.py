"""The web page at GET /, driven in Debian's Chromium by Playwright against a real
`imgcls serve` process that requires an API key: upload, top-5 bars, heat map, correction,
errors, phone size, and the key (from the printed address, or asked for once).

Screenshots go to $IMGCLS_ARTIFACTS_DIR (default: test-artifacts/ at the repository root).
Without /usr/bin/chromium the test is skipped, unless IMGCLS_REQUIRE_BROWSER=1 (set by
.ci/run), where a missing browser is a failure.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import REPO, SAMPLES
from serve_utils import CAT, ESPRESSO, process_server

from imgcls.serve.feedback import sha256_hex

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHONE = {"width": 390, "height": 844}  # an iPhone 12-14 viewport, CSS pixels
KEY = "web-page-key-5e7c0a91"  # the server's; the page gets it as `imgcls serve` prints it
TIMEOUT_MS = 120_000  # a first Grad-CAM on two busy cores takes seconds


def _require_browser() -> None:
    required = os.environ.get("IMGCLS_REQUIRE_BROWSER") == "1"
    problem = None
    if not CHROMIUM.exists():
        problem = f"{CHROMIUM} is missing (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "the playwright package is missing (pip install -e '.[dev]')"
    if problem and required:
        pytest.fail(f"IMGCLS_REQUIRE_BROWSER=1 but {problem}")
    if problem:
        pytest.skip(problem)


@pytest.fixture(scope="module")
def artifacts() -> Path:
    directory = Path(os.environ.get("IMGCLS_ARTIFACTS_DIR", REPO / "test-artifacts"))
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, Path, Path]]:
    _require_browser()
    root = tmp_path_factory.mktemp("web")
    log_db, feedback_dir = root / "log.db", root / "feedback"
    args = ("--log-db", str(log_db), "--feedback-dir", str(feedback_dir), "--max-wait-ms", "1",
            "--model", "efficientnet_lite0", "--model", "simple_cnn", "--api-key", KEY)  # fmt: skip
    with process_server(*args) as (_, url):
        yield url, log_db, feedback_dir


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _with_key(url: str) -> str:
    return f"{url}/?key={KEY}"  # the address `imgcls serve` prints with a generated key


def _page(browser, **context_options):
    context = browser.new_context(**context_options)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    return page


def test_upload_shows_top5_heat_map_and_takes_a_correction(browser, server, artifacts) -> None:
    from playwright.sync_api import expect

    url, log_db, feedback_dir = server
    page = _page(browser, viewport={"width": 1200, "height": 900}, locale="en-US")
    page.goto(_with_key(url))
    expect(page.locator("#drop")).to_contain_text("Drop images here")
    expect(page.locator("#model option")).to_have_count(2)  # two served: a picker
    expect(page.locator("#model")).to_have_value("efficientnet_lite0")  # the default first

    page.set_input_files("#file", str(SAMPLES / "espresso.jpg"))
    card = page.locator(".card").first
    rows = card.locator(".row")
    expect(rows).to_have_count(5)
    expect(rows.first.locator(".label")).to_have_text("espresso")
    expect(rows.first.locator(".pct")).to_have_text(re.compile(r"^\d{1,3}\.\d%$"))
    expect(card.locator(".meta")).to_contain_text(re.compile(r"model efficientnet_lite0 · \d+ ms"))
    page.screenshot(path=str(artifacts / "web-page-result.png"), full_page=True)

    page.check("#heatmap")
    heat = card.locator("img.heat")
    expect(heat).to_be_visible()
    assert heat.get_attribute("src").startswith("data:image/png;base64,")
    page.screenshot(path=str(artifacts / "web-page-heatmap.png"), full_page=True)
    page.uncheck("#heatmap")
    expect(heat).to_be_hidden()

    card.locator(".feedback input").fill("cup")
    card.locator(".feedback button").click()
    expect(card.locator(".feedback .status")).to_have_text("Thanks — saved as “cup”.")
    digest = sha256_hex(ESPRESSO)
    assert (feedback_dir / "cup" / f"{digest}.jpg").read_bytes() == ESPRESSO
    with sqlite3.connect(log_db) as db:
        assert db.execute("SELECT label FROM feedback WHERE sha256 = ?", (digest,)).fetchall() == [
            ("cup",)
        ]
        logged = db.execute("SELECT label FROM predictions WHERE sha256 = ?", (digest,))
        assert logged.fetchall() == [("espresso",)]

    card.locator(".feedback input").fill("not a class")
    card.locator(".feedback button").click()
    expect(card.locator(".feedback .status")).to_contain_text("Error 422")
    expect(card.locator(".feedback .status")).to_contain_text("not one of the 1000 classes")
    page.screenshot(path=str(artifacts / "web-page-feedback.png"), full_page=True)


def test_the_hierarchical_answer_sits_above_the_bars(browser, server) -> None:
    """The bundled ImageNet model splits the cat photo between three cat classes; the
    WordNet answer above the bars is the node that holds them."""
    from playwright.sync_api import expect

    url, _, _ = server
    page = _page(browser, locale="en-US")
    page.goto(_with_key(url))
    page.set_input_files("#file", str(SAMPLES / "cat.jpg"))
    answer = page.locator(".card .answer")
    expect(answer).to_contain_text("domestic cat")
    assert answer.get_attribute("title").endswith("feline › cat › domestic cat")
    expect(page.locator(".card .row")).to_have_count(5)


def test_a_text_file_shows_a_readable_error(browser, server, artifacts) -> None:
    from playwright.sync_api import expect

    url, _, _ = server
    page = _page(browser, locale="en-US")
    page.goto(_with_key(url))
    page.set_input_files(
        "#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}]
    )
    error = page.locator(".card .error")
    expect(error).to_contain_text("Error 422")
    expect(error).to_contain_text("notes.txt: not an image")
    page.screenshot(path=str(artifacts / "web-page-error.png"), full_page=True)


def test_the_picked_model_answers(browser, server) -> None:
    from playwright.sync_api import expect

    url, _, _ = server
    page = _page(browser, locale="en-US")
    page.goto(_with_key(url))
    page.select_option("#model", "simple_cnn")
    expect(page.locator("#labels option")).to_have_count(10)  # its classes, for corrections
    page.set_input_files("#file", str(SAMPLES / "cat.jpg"))
    expect(page.locator(".card .meta")).to_contain_text("model simple_cnn")
    expect(page.locator(".card .row")).to_have_count(5)
    expect(page.locator(".card .row .label").first).to_have_text(re.compile(r"^class_\d$"))


def test_phone_sized_screen_in_chinese_with_several_images(browser, server, artifacts) -> None:
    from playwright.sync_api import expect

    url, _, _ = server
    page = _page(browser, viewport=PHONE, locale="zh-CN", is_mobile=True, has_touch=True)
    page.goto(_with_key(url))
    expect(page.locator("#drop")).to_contain_text("把图片拖到这里")
    page.set_input_files("#file", [str(SAMPLES / "espresso.jpg"), str(SAMPLES / "cat.jpg")])
    expect(page.locator(".card")).to_have_count(2)
    expect(page.locator(".card .row")).to_have_count(10)
    # Nothing sticks out sideways: the page fits the phone's width.
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    card_box = page.locator(".card").first.bounding_box()
    assert card_box["width"] <= PHONE["width"]
    page.screenshot(path=str(artifacts / "web-page-phone.png"), full_page=True)


def test_a_prediction_marked_unknown_reads_not_sure(browser, server) -> None:
    """The page reads an optional `"unknown": true` on a prediction (an open-set score
    another feature adds); here the server's answer is handed to the page with it added."""
    from playwright.sync_api import expect

    url, _, _ = server
    page = _page(browser, locale="zh-CN")

    # The server's own answer for the photo, with the flag added.
    answer = httpx.post(
        f"{url}/v1/classify",
        files={"file": ("espresso.jpg", ESPRESSO)},
        headers={"X-API-Key": KEY},
        timeout=60,
    )
    body = answer.json()
    body["results"][0]["predictions"][0]["unknown"] = True
    marked = json.dumps(body)

    def mark_unknown(route) -> None:
        route.fulfill(status=200, content_type="application/json", body=marked)

    page.route("**/v1/classify*", mark_unknown)
    page.goto(_with_key(url))
    page.set_input_files("#file", str(SAMPLES / "espresso.jpg"))
    expect(page.locator(".card .row .label").first).to_have_text("不确定")
    expect(page.locator(".card .row .label").nth(1)).not_to_have_text("不确定")


def test_a_pasted_and_a_dropped_image_are_classified(browser, server) -> None:
    from playwright.sync_api import expect

    url, _, _ = server
    page = _page(browser, locale="en-US")
    held: list = []  # the model list's request, held so the paste comes before its answer
    page.route("**/v1/models", lambda route: held.append(route))
    page.goto(_with_key(url))
    make_transfer = """([name, b64]) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, {type: "image/jpeg"}));
        return transfer;
    }"""
    pasted = page.evaluate_handle(
        make_transfer, ["pasted.jpg", base64.b64encode(ESPRESSO).decode()]
    )
    page.evaluate(
        "t => document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: t}))", pasted
    )
    expect(page.locator(".card .meta")).to_contain_text("pasted.jpg")
    assert len(held) == 1
    held[0].continue_()
    expect(page.locator(".card .row .label").first).to_have_text("espresso")

    dropped = page.evaluate_handle(make_transfer, ["dropped.jpg", base64.b64encode(CAT).decode()])
    page.dispatch_event("#drop", "drop", {"dataTransfer": dropped})
    expect(page.locator(".card")).to_have_count(2)
    newest = page.locator(".card").first  # new cards go on top
    expect(newest.locator(".meta")).to_contain_text("dropped.jpg")
    expect(newest.locator(".row .label").first).to_have_text(re.compile("cat|tabby"))


def test_the_key_in_the_printed_address_is_kept_for_the_session_and_hidden(browser, server) -> None:
    from playwright.sync_api import expect

    url, _, _ = server
    page = _page(browser, locale="en-US")
    sent: list[str | None] = []
    page.on(
        "request",
        lambda r: sent.append(r.headers.get("authorization")) if "/v1/" in r.url else None,
    )
    page.goto(_with_key(url))
    expect(page.locator("#model option")).to_have_count(2)
    assert "key=" not in page.url  # out of the address bar, the history and bookmarks
    page.reload()  # the tab's session keeps the key
    page.set_input_files("#file", str(SAMPLES / "espresso.jpg"))
    expect(page.locator(".card .row .label").first).to_have_text("espresso")
    expect(page.locator("#key-form")).to_be_hidden()
    assert sent and set(sent) == {f"Bearer {KEY}"}  # every API call carried it


def test_without_the_key_the_page_asks_once_and_retries(browser, server, artifacts) -> None:
    from playwright.sync_api import expect

    url, _, _ = server
    page = _page(browser, locale="en-US")
    page.goto(url)
    form = page.locator("#key-form")
    expect(form).to_be_visible()  # the model list was refused: 401
    expect(form).to_contain_text("needs its API key")
    page.set_input_files("#file", str(SAMPLES / "cat.jpg"))  # waits for the same answer
    page.fill("#key", "not-the-key")
    page.click("#key-form button")
    expect(form).to_contain_text("That key was refused")
    page.screenshot(path=str(artifacts / "web-page-key.png"), full_page=True)
    page.fill("#key", KEY)
    page.click("#key-form button")
    expect(form).to_be_hidden()
    expect(page.locator("#model option")).to_have_count(2)
    expect(page.locator(".card .row")).to_have_count(5)  # the waiting upload, classified


def test_the_labels_a_model_asserts_are_chips_above_the_bars(browser, server, artifacts) -> None:
    """A single-label model asserts its top-1: one chip, one bold bar. A multi-label
    answer (the server's own, reshaped as a multi-label model gives it: several classes
    present) shows a chip for each present class, best first."""
    from playwright.sync_api import expect

    url, _, _ = server
    page = _page(browser, locale="en-US")
    page.goto(_with_key(url))
    page.set_input_files("#file", str(SAMPLES / "espresso.jpg"))
    card = page.locator(".card").first
    expect(card.locator(".chip")).to_have_text(["espresso"])
    expect(card.locator(".row.present .label")).to_have_text(["espresso"])

    body = httpx.post(
        f"{url}/v1/classify",
        files={"file": ("espresso.jpg", ESPRESSO)},
        headers={"X-API-Key": KEY},
        timeout=60,
    ).json()
    [result] = body["results"]
    for prediction in result["predictions"][:3]:
        prediction["present"] = True
    result["labels"] = [p["label"] for p in result["predictions"][:3]]
    multi_label = json.dumps(body)
    page = _page(browser, locale="en-US")
    page.route(
        "**/v1/classify*",
        lambda route: route.fulfill(status=200, content_type="application/json", body=multi_label),
    )
    page.goto(_with_key(url))
    page.set_input_files("#file", str(SAMPLES / "espresso.jpg"))
    card = page.locator(".card").first
    expect(card.locator(".chip")).to_have_text(result["labels"])
    expect(card.locator(".row.present")).to_have_count(3)
    expect(card.locator(".row")).to_have_count(5)
    page.screenshot(path=str(artifacts / "web-page-labels.png"), full_page=True)
