"""The page's "to label" view, driven in Debian's Chromium by Playwright against a real
`imgcls serve --label-queue` process behind an API key: keys 1-9, skip, "not any of
these", English and Chinese, phone width; every answer arrives in the feedback store and
the log as a correction does. Skipped without a browser, as tests/serve/test_web_page.py."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from helpers import write_photo_crops
from serve_utils import process_server
from test_web_page import CHROMIUM, CHROMIUM_ARGS, PHONE, TIMEOUT_MS, _require_browser

from imgcls.select import select_images, write_queue

KEY = "label-view-key-3f9a"


@pytest.fixture(scope="module")
def labelling(tiny_run, tmp_path_factory):
    _require_browser()
    root = tmp_path_factory.mktemp("label-view")
    crops = write_photo_crops(root / "pool", per_class=2, size=32)
    queue = write_queue(select_images(crops, str(tiny_run), budget=3), root / "queue.csv")
    log_db, feedback_dir = root / "log.db", root / "feedback"
    args = ("--model", str(tiny_run), "--api-key", KEY, "--label-queue", str(queue),
            "--log-db", str(log_db), "--feedback-dir", str(feedback_dir))  # fmt: skip
    with process_server(*args) as (_, url):
        yield url, log_db, feedback_dir


def _corrections(feedback_dir: Path, log_db: Path) -> tuple[list[str], list[str]]:
    stored = sorted(path.parent.name for path in feedback_dir.rglob("*.jpg"))
    with sqlite3.connect(log_db) as db:
        logged = sorted(label for (label,) in db.execute("SELECT label FROM feedback"))
    return stored, logged


def test_keys_label_the_queue_and_each_answer_is_a_correction(labelling):
    from playwright.sync_api import expect, sync_playwright

    url, log_db, feedback_dir = labelling
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_context(locale="en-US").new_page()
        page.goto(f"{url}/?key={KEY}#label")
        status, guesses = page.locator("#queue-status"), page.locator("#queue-guesses button")
        expect(status).to_contain_text("3 to label")
        expect(guesses).to_have_count(3)  # the tiny run's three classes
        first = guesses.first.get_attribute("data-label")
        page.keyboard.press("1")
        expect(page.locator("#notice")).to_have_text(f"Saved “{first}”.")
        expect(status).to_contain_text("2 to label")
        page.keyboard.press("s")  # skipped: still in the queue for the next visit
        expect(status).to_contain_text("1 to label")
        expect(guesses).to_have_count(3)
        second = guesses.nth(1).get_attribute("data-label")
        page.keyboard.press("2")
        expect(status).to_have_text("Nothing left to label. Thank you!")
        assert _corrections(feedback_dir, log_db) == (sorted([first, second]),) * 2

        # The skipped image, in Chinese at phone width, labelled as none of the guesses.
        phone = browser.new_context(locale="zh-CN", viewport=PHONE).new_page()
        phone.goto(f"{url}/?key={KEY}#label")
        expect(phone.locator("#queue-status")).to_contain_text("还有 1 张待标注")
        expect(phone.locator("#queue-guesses button")).to_have_count(3)
        for button in phone.locator("#queue-guesses button, .queue-actions button").all():
            box = button.bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
        phone.keyboard.press("n")
        phone.locator("#queue-label").fill("rocket")
        phone.locator("#queue-label").press("Enter")
        expect(phone.locator("#queue-status")).to_have_text("没有待标注的图片了，谢谢！")
        browser.close()
    stored, logged = _corrections(feedback_dir, log_db)
    assert stored == logged == sorted([first, second, "rocket"])
