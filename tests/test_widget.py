"""The chat widget in a real browser: Debian's headless Chromium driven by Playwright loads a
help-centre page from another origin with the one <script> tag, asks, sees the streamed
answer and a citation link; a dead service gives a clear message. Screenshots go to
tests/artifacts/."""

import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import sync_playwright

from .conftest import ROOT
from .servers import free_port, serving

ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
PAGE = """<!doctype html><html><head><title>Harbor & Hearth help centre</title></head>
<body><h1>Harbor &amp; Hearth help centre</h1><p>Browse the articles, or ask us.</p>
<script src="{service}/widget.js" data-endpoint="{endpoint}" data-collection="default"
        data-title="Ask Harbor &amp; Hearth" data-link-base="https://help.example.com/"></script>
</body></html>"""


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, example_data_dir: Path, embedder) -> Iterator[dict[str, str]]:  # type: ignore[no-untyped-def]
    """A help-centre site on one loopback port, the service (CORS allowing it) on another."""
    root = tmp_path_factory.mktemp("site")
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    server = ThreadingHTTPServer(("127.0.0.1", port), partial(_Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with serving(example_data_dir, embedder, backend="extractive", cors_origins=[origin]) as service:
        (root / "index.html").write_text(PAGE.format(service=service, endpoint=service))
        dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        (root / "down.html").write_text(PAGE.format(service=service, endpoint=dead))
        yield {"page": f"{origin}/index.html", "down": f"{origin}/down.html", "service": service, "root": str(root)}
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: `apt-get install chromium` (make test installs it)")
    with sync_playwright() as p:
        launched = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-quic",
                "--no-first-run",
                "--disable-component-update",
                "--disable-sync",
            ],  # fmt: skip
        )
        yield launched
        launched.close()


# The element that has the focus, inside the widget's shadow root where it is there.
FOCUSED = """() => { let e = document.activeElement; while (e && e.shadowRoot && e.shadowRoot.activeElement)
    e = e.shadowRoot.activeElement; return e && (e.getAttribute('aria-label') || e.textContent.trim() || e.tagName); }"""


def _ask(page: Any, question: str) -> None:
    page.get_by_role("button", name="Ask Harbor & Hearth").click()
    page.get_by_label("Your question").fill(question)
    page.get_by_label("Your question").press("Enter")


def test_widget_streams_a_cited_answer_in_a_real_browser(site: dict[str, str], browser: Any) -> None:
    page = browser.new_page(viewport={"width": 900, "height": 640})
    page.goto(site["page"])
    with page.expect_response(f"{site['service']}/v1/query") as streamed:
        _ask(page, "Do gift cards expire?")
    assert streamed.value.headers["content-type"].startswith("text/event-stream")
    link = page.locator(".rag-cites a").first
    link.wait_for(timeout=30_000)
    assert "never expire" in page.locator(".rag-bot").last.inner_text()
    assert link.get_attribute("href") == "https://help.example.com/gift-cards.txt"
    assert link.inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "widget.png"))
    # A follow-up carries the conversation.
    page.get_by_label("Your question").fill("How do I check the balance?")
    page.get_by_label("Your question").press("Enter")
    page.locator(".rag-bot").nth(1).locator(".rag-cites a").first.wait_for(timeout=30_000)
    page.close()


def test_widget_thumbs_down_reaches_the_service_and_takes_the_answer_out_of_the_cache(
    site: dict[str, str], browser: Any
) -> None:
    import httpx

    question = "Can I change my delivery address after ordering?"
    page = browser.new_page()
    page.goto(site["page"])
    _ask(page, question)
    down = page.get_by_role("button", name="Not helpful")
    down.wait_for(timeout=30_000)
    cached = httpx.post(f"{site['service']}/v1/query", json={"question": question}, timeout=60).json()
    assert cached["cache"]["hit"] is True  # the widget's answer is cached
    with page.expect_response(f"{site['service']}/v1/feedback") as sent:
        down.click()
    assert sent.value.status == 200 and sent.value.json()["evicted"] >= 1, sent.value.text()
    rated = sent.value.request.post_data_json["answer_id"]
    assert len(rated) == 32 and rated != cached["answer_id"]  # the widget's own answer, not the later hit
    page.get_by_text("Our team has been told").wait_for(timeout=10_000)
    again = httpx.post(f"{site['service']}/v1/query", json={"question": question}, timeout=60).json()
    assert again["cache"]["hit"] is False, again
    page.close()


def test_a_thumbs_down_in_the_widget_shows_on_the_admin_page_and_a_pin_there_changes_the_next_answer(
    site: dict[str, str], browser: Any
) -> None:
    question = "Can I pay with PayPal?"
    pinned = "Yes: choose PayPal at checkout, it is charged when the order ships."
    widget = browser.new_page()
    widget.goto(site["page"])
    _ask(widget, question)
    widget.get_by_role("button", name="Not helpful").click(timeout=30_000)
    widget.get_by_text("Our team has been told").wait_for(timeout=10_000)

    admin = browser.new_page(viewport={"width": 1200, "height": 900})
    blocked: list[str] = []
    admin.on(
        "console", lambda message: blocked.append(message.text) if "Content Security Policy" in message.text else None
    )
    page_response = admin.goto(f"{site['service']}/admin")
    assert page_response is not None and page_response.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page_response.headers["content-security-policy"]
    admin.wait_for_selector("body[data-loaded]", timeout=30_000)
    row = admin.locator("tr.voted-down", has_text=question)
    row.wait_for(timeout=10_000)
    assert admin.locator("#tiles").inner_text()  # the overview and the charts are drawn
    assert admin.locator("#rates svg polyline").count() == 3 and admin.locator("#latency svg polyline").count() == 2
    row.get_by_label(f"Answer to pin for: {question}").fill(pinned)
    row.get_by_role("button", name="Pin").click()
    admin.locator("tr.curated", has_text=pinned).wait_for(timeout=10_000)
    (curated,) = httpx.get(f"{site['service']}/v1/curated", timeout=10).json()["data"]
    assert curated["citations"], curated  # the voted-down answer's documents: it goes to review when they change
    ARTIFACTS.mkdir(exist_ok=True)
    admin.screenshot(path=str(ARTIFACTS / "admin.png"), full_page=True)
    assert not blocked, blocked  # the page works under its own policy

    # The same conversation asks again (a follow-up, word for word the pinned question).
    widget.get_by_label("Your question").fill(question)
    widget.get_by_label("Your question").press("Enter")
    widget.locator(".rag-bot").nth(1).locator(".rag-rate").wait_for(timeout=30_000)
    assert widget.locator(".rag-bot .rag-text").nth(1).inner_text().startswith(pinned)
    widget.close()
    customer = browser.new_page()  # and the next customer, in a reworded first question
    customer.goto(site["page"])
    _ask(customer, "Can I pay using PayPal?")
    customer.locator(".rag-bot .rag-rate").wait_for(timeout=30_000)
    assert customer.locator(".rag-bot .rag-text").first.inner_text().startswith(pinned)
    customer.close()
    admin.close()


def test_widget_reads_events_whose_line_ends_are_split_across_reads(site: dict[str, str], browser: Any) -> None:
    """Fault injection: an endpoint speaking the service's SSE framing ("\\r\\n" line ends, as
    sse-starlette writes them) whose "\\r\\n" is split between two network reads, as a proxy
    that re-chunks may split it. The widget must still see where each event ends."""
    import asyncio
    import json
    from collections.abc import AsyncIterator

    from fastapi import FastAPI
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.responses import StreamingResponse

    from .servers import running_server

    cited = {"id": 1, "document_id": "cards/gift cards.txt", "source": "cards/gift cards.txt", "title": "Gift cards",
             "text": "Gift cards never expire.", "score": 1.0}  # fmt: skip
    done = {"answer": "Gift cards never expire.", "citations": [cited], "answer_id": "a" * 32, "needs_human": None}
    app = FastAPI()
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])

    @app.post("/v1/query")
    async def query() -> StreamingResponse:
        async def events() -> AsyncIterator[str]:
            yield 'event: token\r\ndata: {"text": "Gift cards never"}\r\n\r'
            await asyncio.sleep(0.3)
            yield f"\nevent: done\r\ndata: {json.dumps(done)}\r\n\r\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    with running_server(app) as endpoint:
        (Path(site["root"]) / "split.html").write_text(PAGE.format(service=site["service"], endpoint=endpoint))
        page = browser.new_page()
        page.goto(site["page"].replace("index.html", "split.html"))
        _ask(page, "Do gift cards expire?")
        page.locator(".rag-bot", has_text="Gift cards never expire.").wait_for(timeout=15_000)
        assert page.locator(".rag-error").count() == 0
        link = page.locator(".rag-bot a", has_text="Gift cards").first  # a folder stays a folder in the link
        assert link.get_attribute("href") == "https://help.example.com/cards/gift%20cards.txt"
        page.close()


def test_widget_says_so_when_the_service_is_unreachable(site: dict[str, str], browser: Any) -> None:
    page = browser.new_page()
    page.goto(site["down"])
    _ask(page, "Do gift cards expire?")
    error = page.locator(".rag-error")
    error.wait_for(timeout=15_000)
    assert "can't be reached" in error.inner_text()
    page.screenshot(path=str(ARTIFACTS / "widget-unreachable.png"))
    page.close()


def test_widget_script_is_served_and_cors_allows_only_the_listed_origin(site: dict[str, str]) -> None:
    import httpx

    script = httpx.get(f"{site['service']}/widget.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    origin = site["page"].rsplit("/", 1)[0]
    preflight = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    allowed = httpx.options(f"{site['service']}/v1/query", headers=preflight)
    assert allowed.headers.get("access-control-allow-origin") == origin
    other = httpx.options(f"{site['service']}/v1/query", headers={**preflight, "Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    assert other.status_code == 400 and other.json()["error"]["code"] == "cors_refused", other.text  # the one shape
    assert "RAG_CORS_ORIGINS" in other.json()["error"]["message"]


def test_widget_sends_its_api_key_to_a_service_that_needs_one(
    tmp_path: Path, example_data_dir: Path, embedder: Any, browser: Any
) -> None:
    """With API keys on, the page carries a key made for its one collection (data-api-key)."""
    from serving.keys import KeyStore

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "collections").symlink_to(example_data_dir / "collections")
    store = KeyStore(data_dir)
    key = store.create(["default"], name="help centre widget", public=True)[0]
    store.close()
    root = tmp_path / "site"
    root.mkdir()
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    server = ThreadingHTTPServer(("127.0.0.1", port), partial(_Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with serving(data_dir, embedder, backend="extractive", cors_origins=[origin]) as service:
            tag = 'data-collection="default" data-api-key="{key}"'
            page_html = PAGE.format(service=service, endpoint=service)
            (root / "keyed.html").write_text(page_html.replace('data-collection="default"', tag.format(key=key)))
            (root / "wrong.html").write_text(page_html.replace('data-collection="default"', tag.format(key=key + "x")))
            page = browser.new_page()
            page.goto(f"{origin}/keyed.html")
            _ask(page, "Do gift cards expire?")
            page.locator(".rag-cites a").first.wait_for(timeout=30_000)
            assert "never expire" in page.locator(".rag-bot").last.inner_text()
            page.goto(f"{origin}/wrong.html")
            console: list[str] = []
            page.on("console", lambda message: console.append(message.text))
            _ask(page, "Do gift cards expire?")
            error = page.locator(".rag-error")
            error.wait_for(timeout=15_000)
            # The customer reads words for a customer; whoever runs the page finds the reason in the console.
            assert "isn't available right now" in error.inner_text() and "rag keys" not in error.inner_text()
            assert any("API key not recognised" in line for line in console), console
            page.close()
    finally:
        server.shutdown()
        server.server_close()


def _fault_page(site: dict[str, str], endpoint: str, name: str, extra: str = "") -> str:
    html = PAGE.format(service=site["service"], endpoint=endpoint).replace(
        'data-collection="default"', f'data-collection="default" {extra}'
    )
    (Path(site["root"]) / name).write_text(html)
    return site["page"].replace("index.html", name)


def test_widget_links_only_under_its_link_base_and_words_a_refusal_for_customers(
    site: dict[str, str], browser: Any
) -> None:
    """Fault injection (the service's SSE framing and error shape): citations whose document ids
    would climb out of data-link-base or leave its site get no link; a 429 is told to the
    customer in their words, the question is kept, and "Try again" asks it again."""
    import json
    from collections.abc import AsyncIterator

    from fastapi import FastAPI
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.responses import JSONResponse, StreamingResponse

    from .servers import running_server

    ids = ["../../../../etc/passwd", "https://evil.example/phish", "https://help.example.com/ok.html", "faq/a b.md",
           ".evil.example/x"]  # fmt: skip  # the last, pasted after a base without its "/", named another host
    cites = [
        {"id": n, "document_id": d, "source": d, "title": f"doc {n}", "text": "x", "score": 1.0}
        for n, d in enumerate(ids)
    ]
    # A citation's url (the document's own page, from its canonical link) is the link when it
    # is on the site; one that is not falls back to data-link-base + the document id.
    cites += [
        {"id": 5, "document_id": "export/42.html", "source": "export/42.html", "title": "doc 5", "text": "x",
         "score": 1.0, "url": "https://help.example.com/hc/en-us/articles/42-Plans"},
        {"id": 6, "document_id": "faq/six.md", "source": "faq/six.md", "title": "doc 6", "text": "x",
         "score": 1.0, "url": "https://evil.example/six"},
        {"id": 7, "document_id": "policies/terms.pdf", "source": "policies/terms.pdf", "title": "doc 7", "text": "x",
         "score": 1.0, "url": "", "page": 3},
    ]  # fmt: skip
    done = {"answer": "Gift cards never expire.", "citations": cites, "answer_id": "b" * 32, "needs_human": None}
    app = FastAPI()
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])
    app.state.calls = 0

    @app.post("/v1/query", response_model=None)
    async def query() -> StreamingResponse | JSONResponse:
        app.state.calls += 1
        if app.state.calls == 1:
            error = {"message": "rate limit of 30 per 1 minute reached for this visitor - retry in 3 s",
                     "type": "rate_limit_error", "param": None, "code": "rate_limit_exceeded"}  # fmt: skip
            return JSONResponse({"error": error}, status_code=429)

        async def events() -> AsyncIterator[str]:
            yield f"event: done\r\ndata: {json.dumps(done)}\r\n\r\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    with running_server(app) as endpoint:
        page = browser.new_page()
        console: list[str] = []
        page.on("console", lambda message: console.append(message.text))
        url = _fault_page(site, endpoint, "refused.html")
        html = Path(site["root"], "refused.html").read_text()
        Path(site["root"], "refused.html").write_text(html.replace('help.example.com/"', 'help.example.com"'))
        page.goto(url)
        _ask(page, "Do gift cards expire?")
        error = page.locator(".rag-error")
        error.wait_for(timeout=15_000)
        assert "a lot of questions" in error.inner_text() and "visitor" not in error.inner_text()
        assert any("rate limit of 30" in line for line in console), console
        assert page.get_by_label("Your question").input_value() == "Do gift cards expire?"  # not lost
        page.get_by_role("button", name="Try again").click()
        page.locator(".rag-bot", has_text="Gift cards never expire.").wait_for(timeout=15_000)
        assert page.locator(".rag-error").count() == 0 and page.locator(".rag-user").count() == 1
        cited = page.locator(".rag-cites").last
        assert cited.locator("a").count() == 6
        pdf = cited.locator("a", has_text="doc 7")  # a PDF passage opens at its page, which it names
        assert pdf.inner_text() == "doc 7 (p. 3)"
        assert pdf.get_attribute("href") == "https://help.example.com/policies/terms.pdf#page=3"
        assert (
            cited.locator("a", has_text="doc 5").get_attribute("href")
            == "https://help.example.com/hc/en-us/articles/42-Plans"
        )
        assert cited.locator("a", has_text="doc 6").get_attribute("href") == "https://help.example.com/faq/six.md"
        assert cited.locator("a", has_text="doc 4").get_attribute("href").startswith("https://help.example.com/")  # type: ignore[union-attr]
        assert cited.locator("a", has_text="doc 2").get_attribute("href") == "https://help.example.com/ok.html"
        assert cited.locator("a", has_text="doc 3").get_attribute("href") == "https://help.example.com/faq/a%20b.md"
        assert (
            cited.locator("span", has_text="doc 0").count() == 1
            and cited.locator("span", has_text="doc 1").count() == 1
        )
        page.close()


def test_widget_gives_up_on_a_silent_service_and_keeps_the_question(site: dict[str, str], browser: Any) -> None:
    import asyncio
    from collections.abc import AsyncIterator

    from fastapi import FastAPI
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.responses import StreamingResponse

    from .servers import running_server

    app = FastAPI()
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])

    @app.post("/v1/query")
    async def query() -> None:  # a hung service: it never answers
        await asyncio.sleep(30)

    @app.post("/pings/v1/query")
    async def pings() -> StreamingResponse:  # a stream that started, then only keep-alive comments
        async def events() -> AsyncIterator[str]:
            for _ in range(60):
                yield ": ping\r\n\r\n"
                await asyncio.sleep(0.5)

        return StreamingResponse(events(), media_type="text/event-stream")

    with running_server(app) as endpoint:
        for name, where in (("silent.html", endpoint), ("pings.html", f"{endpoint}/pings")):
            page = browser.new_page()
            page.goto(_fault_page(site, where, name, 'data-timeout="2"'))
            _ask(page, "Do gift cards expire?")
            error = page.locator(".rag-error")
            error.wait_for(timeout=15_000)
            assert "taking longer than usual" in error.inner_text(), name
            assert page.get_by_role("button", name="Try again").is_visible()
            assert page.get_by_label("Your question").input_value() == "Do gift cards expire?"
            assert page.get_by_role("button", name="Send").is_enabled()
            page.close()


def test_widget_keeps_the_conversation_across_a_reload_and_closes_on_escape(site: dict[str, str], browser: Any) -> None:
    page = browser.new_page()
    page.goto(_fault_page(site, site["service"], "contact.html", 'data-contact="https://example.com/contact"'))
    bubble = page.get_by_role("button", name="Ask Harbor & Hearth")
    assert bubble.get_attribute("aria-expanded") == "false"
    _ask(page, "Do gift cards expire?")
    assert bubble.get_attribute("aria-expanded") == "true"
    page.locator(".rag-bot .rag-rate").wait_for(timeout=30_000)
    answer = page.locator(".rag-bot .rag-text").first.inner_text()
    page.get_by_label("Your question").press("Escape")
    assert not page.get_by_role("dialog").is_visible() and bubble.get_attribute("aria-expanded") == "false"
    assert page.evaluate(FOCUSED) == "Ask Harbor & Hearth"
    page.reload()
    bubble.click()
    assert page.locator(".rag-user .rag-text").first.inner_text() == "Do gift cards expire?"
    assert page.locator(".rag-bot .rag-text").first.inner_text() == answer
    # An answer the documents do not give: the team is told, and the page says how to reach a person.
    page.get_by_label("Your question").fill("What is the capital of Mongolia?")
    page.get_by_label("Your question").press("Enter")
    told = page.locator(".rag-handoff")
    told.wait_for(timeout=30_000)
    assert page.locator(".rag-contact a").get_attribute("href") == "https://example.com/contact"
    page.close()


def _styled_page(site: dict[str, str], name: str, head: str = "", tag: str = "") -> str:
    """A help page with extra markup in its <head> (a policy, a stylesheet) and on the widget's tag."""
    html = PAGE.format(service=site["service"], endpoint=site["service"])
    html = html.replace("<title>", head + "<title>").replace("<script ", f"<script {tag} ")
    (Path(site["root"]) / name).write_text(html)
    return site["page"].replace("index.html", name)


def _bubble_is_styled(page: Any) -> None:
    """The bubble floats at the bottom right, the panel stays shut until it is pressed."""
    bubble = page.get_by_role("button", name="Ask Harbor & Hearth")
    box = bubble.bounding_box()
    viewport = page.viewport_size
    assert box is not None and viewport is not None
    assert box["width"] == 56 and box["height"] == 56, box
    assert viewport["width"] - 40 <= box["x"] + box["width"] <= viewport["width"], box
    assert viewport["height"] - 40 <= box["y"] + box["height"] <= viewport["height"], box
    assert not page.get_by_role("dialog").is_visible()
    bubble.click()
    assert page.get_by_role("dialog").is_visible() and page.get_by_role("button", name="Send").is_visible()


def test_widget_is_styled_under_a_strict_content_security_policy(site: dict[str, str], browser: Any) -> None:
    """A page whose policy allows the service for scripts and fetches, and no inline styles: the
    widget's styles still apply (a constructable stylesheet), and the browser blocks nothing."""
    service = site["service"]
    policy = f"default-src 'self'; script-src 'self' {service}; connect-src 'self' {service}; style-src 'self'; img-src 'self'"
    page = browser.new_page()
    blocked: list[str] = []
    page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(_styled_page(site, "csp.html", f'<meta http-equiv="Content-Security-Policy" content="{policy}">'))
    _bubble_is_styled(page)
    page.get_by_label("Your question").fill("Do gift cards expire?")
    page.get_by_label("Your question").press("Enter")
    page.locator(".rag-cites a").first.wait_for(timeout=30_000)
    assert page.locator(".rag-bot").last.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(242, 242, 244)"
    assert not blocked, blocked
    page.close()


def test_widget_falls_back_to_a_style_with_the_scripts_nonce(site: dict[str, str], browser: Any) -> None:
    """A browser without constructable stylesheets: the widget's <style> carries the nonce its
    <script> tag was given, which a nonce-based policy allows."""
    service = site["service"]
    policy = f"default-src 'self'; script-src 'nonce-r4nd0m'; connect-src {service}; style-src 'nonce-r4nd0m'"
    page = browser.new_page()
    page.add_init_script("delete ShadowRoot.prototype.adoptedStyleSheets")
    blocked: list[str] = []
    page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
    head = f'<meta http-equiv="Content-Security-Policy" content="{policy}">'
    page.goto(_styled_page(site, "nonce.html", head, 'nonce="r4nd0m"'))
    _bubble_is_styled(page)
    assert not blocked, blocked
    page.close()


HOSTILE = """<style>
button, div, span, form, input, a { display: none !important; }
* { font-size: 40px !important; text-transform: uppercase; min-height: 60px; padding: 20px; border: 3px solid red; }
input { background: #000 !important; color: #000 !important; }
:root { color-scheme: dark; background: #111; color: #eee; direction: rtl; }
</style>"""


def test_widget_is_untouched_by_the_host_pages_css(site: dict[str, str], browser: Any) -> None:
    """Reset and theme sheets on the help page (buttons hidden, black inputs, huge fonts, a dark
    colour scheme) do not reach the widget: every control shows, in the widget's own colours."""
    page = browser.new_page()
    page.goto(_styled_page(site, "hostile.html", HOSTILE))
    _bubble_is_styled(page)
    assert page.get_by_role("button", name="Close").is_visible()
    field = page.get_by_label("Your question")
    assert field.is_visible()
    colours = field.evaluate("e => [getComputedStyle(e).color, getComputedStyle(e).backgroundColor]")
    assert colours == ["rgb(27, 27, 31)", "rgb(255, 255, 255)"], colours
    assert field.evaluate("e => getComputedStyle(e).fontSize") == "16px"
    assert field.evaluate("e => getComputedStyle(e).colorScheme") == "light"
    send = page.get_by_role("button", name="Send").bounding_box()
    assert send is not None and send["height"] < 60, send
    page.close()


def _pixel(page: Any, x: float, y: float) -> tuple[int, ...]:
    """The colour the page shows at (x, y)."""
    import io

    from PIL import Image

    shot = page.screenshot(clip={"x": int(x), "y": int(y), "width": 1, "height": 1})
    return tuple(Image.open(io.BytesIO(shot)).convert("RGB").getpixel((0, 0)))


def _region(page: Any, box: dict[str, float]) -> bytes:
    import io

    from PIL import Image

    clip = {key: int(box[key]) for key in ("x", "y", "width", "height")}
    return Image.open(io.BytesIO(page.screenshot(clip=clip))).convert("RGB").tobytes()


def test_widget_focus_rings_show_on_a_dark_page_and_inside_controls_on_the_panels_edge(
    site: dict[str, str], browser: Any
) -> None:
    """A two-tone ring: its white band shows on a dark page (a dark ring alone would not). Send
    sits on the panel's edge, whose overflow hides anything outside it: its ring is inside it."""
    page = browser.new_page()
    page.goto(_styled_page(site, "dark.html", "<style>html, body { background: #111; color: #eee; }</style>"))
    page.keyboard.press("Tab")
    bubble = page.get_by_role("button", name="Ask Harbor & Hearth")
    assert page.evaluate(FOCUSED) == "Ask Harbor & Hearth"
    box = bubble.bounding_box()
    assert box is not None
    centre = box["x"] + box["width"] / 2
    assert min(_pixel(page, centre, box["y"] - 1)) > 200, _pixel(page, centre, box["y"] - 1)  # the white band
    assert max(_pixel(page, centre, box["y"] - 3)) < 60, _pixel(page, centre, box["y"] - 3)  # the dark outline
    page.keyboard.press("Enter")
    assert page.evaluate(FOCUSED) == "Your question"
    send = page.get_by_role("button", name="Send")
    edge = send.bounding_box()
    panel = page.get_by_role("dialog").bounding_box()
    assert edge is not None and panel is not None
    assert edge["x"] + edge["width"] >= panel["x"] + panel["width"] - 2  # it is on the edge
    unfocused = _region(page, edge)
    page.keyboard.press("Tab")
    assert page.evaluate(FOCUSED) == "Send"
    assert _region(page, edge) != unfocused  # the ring is drawn within Send's own box
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "widget-dark-page.png"))
    page.close()


def test_widget_shows_focus_and_edges_in_forced_colours(site: dict[str, str], browser: Any) -> None:
    """Windows High Contrast drops backgrounds and box shadows: the question field's focus is an
    outline, and the panel, field, bubble, buttons and messages keep an edge (a transparent
    border, which forced colours paint)."""
    context = browser.new_context(forced_colors="active")
    page = context.new_page()
    page.goto(site["page"])
    _ask(page, "Do gift cards expire?")
    page.locator(".rag-cites a").first.wait_for(timeout=30_000)
    field = page.get_by_label("Your question")
    assert page.evaluate(FOCUSED) == "Your question"
    assert field.evaluate("e => getComputedStyle(e).outlineStyle") == "solid"
    box = field.bounding_box()
    assert box is not None
    focused = _region(page, box)
    page.get_by_role("button", name="Send").focus()
    assert _region(page, box) != focused  # the field's focus is visible
    edged = [
        page.get_by_role("dialog"),
        field,
        page.get_by_role("button", name="Ask Harbor & Hearth"),
        page.get_by_role("button", name="Send"),
        page.get_by_role("button", name="Close"),
        page.locator(".rag-user").first,
        page.locator(".rag-bot").first,
    ]
    for element in edged:
        border = element.evaluate(
            "e => { const s = getComputedStyle(e); return [s.borderTopStyle, s.borderTopWidth]; }"
        )
        assert border == ["solid", "1px"], (element, border)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "widget-forced-colours.png"))
    context.close()


LONG_URL = "https://help.example.com/" + "exports/" * 12 + "returns-and-refunds-policy-for-every-country.html"


@pytest.fixture(scope="module")
def fake(site: dict[str, str]) -> Iterator[str]:
    """An endpoint speaking the service's SSE framing and error shape, for states the extractive
    backend does not give on demand; a word in the question picks one: "stream" (an answer word
    by word), "long" (a long URL in the answer, citations with long ids), "handoff" (handed to
    the team), "err401", "err413", "err429" (refusals)."""
    import asyncio
    import json
    from collections.abc import AsyncIterator

    from fastapi import FastAPI, Request
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.responses import JSONResponse, StreamingResponse

    from .servers import running_server

    app = FastAPI()
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])

    @app.post("/v1/query", response_model=None)
    async def query(request: Request) -> StreamingResponse | JSONResponse:
        question = (await request.json())["question"].lower()
        for status in (401, 413, 429):
            if f"err{status}" in question:
                error = {"message": f"simulated {status}", "type": "invalid_request_error", "param": None, "code": None}
                return JSONResponse({"error": error}, status_code=status)
        answer = "Refunds take 5 to 7 business days to appear on your statement once we have inspected the return."
        ids = ["returns-and-refunds.md"]
        if "long" in question:
            answer = f"The full policy is at {LONG_URL} and applies to every order.\n\n" + answer * 3
            ids = ["exports/" + "x" * 130 + ".html", "shipping.md", "gift-cards.txt"]
        cites = [
            {"id": n, "document_id": d, "source": d, "title": d, "text": "x", "score": 1.0} for n, d in enumerate(ids)
        ]
        needs_human = "no_answer" if "handoff" in question else None
        done = {"answer": answer, "citations": cites, "answer_id": "c" * 32, "needs_human": needs_human}
        delay = 0.1 if "stream" in question else 0.0

        async def events() -> AsyncIterator[str]:
            await asyncio.sleep(delay * 10)  # looking it up
            for word in answer.split(" "):
                yield f"event: token\r\ndata: {json.dumps({'text': word + ' '})}\r\n\r\n"
                await asyncio.sleep(delay)
            yield f"event: done\r\ndata: {json.dumps(done)}\r\n\r\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    with running_server(app) as endpoint:
        _fault_page(site, endpoint, "short.html", 'data-max-chars="20"')
        yield _fault_page(site, endpoint, "fake.html")


def test_widget_fills_a_small_screen_and_wraps_long_words(fake: str, browser: Any) -> None:
    """A landscape phone with its keyboard up (667 x 160): the open panel takes the screen, the
    bubble hides, the header, Close and the whole field show. On a 320 px phone a long URL and
    long citation ids wrap (no sideways scrolling) and each citation link is a 24 px target."""
    page = browser.new_page(viewport={"width": 667, "height": 160})
    page.goto(fake)
    page.get_by_role("button", name="Ask Harbor & Hearth").click()
    assert page.get_by_role("dialog").bounding_box() == {"x": 0, "y": 0, "width": 667, "height": 160}
    assert not page.get_by_role("button", name="Ask Harbor & Hearth").is_visible()
    close = page.get_by_role("button", name="Close").bounding_box()
    field = page.get_by_label("Your question").bounding_box()
    assert close is not None and close["y"] >= 0 and close["height"] >= 24, close
    assert field is not None and field["height"] >= 40 and field["y"] + field["height"] <= 160, field
    page.get_by_role("button", name="Close").click()
    assert page.get_by_role("button", name="Ask Harbor & Hearth").is_visible()
    assert page.evaluate(FOCUSED) == "Ask Harbor & Hearth"
    page.close()

    page = browser.new_page(viewport={"width": 320, "height": 568})
    page.goto(fake)
    _ask(page, "A long answer please")
    links = page.locator(".rag-cites a")
    links.first.wait_for(timeout=15_000)
    assert page.get_by_role("dialog").bounding_box() == {"x": 0, "y": 0, "width": 320, "height": 568}
    log = page.locator(".rag-log").evaluate("e => [e.scrollWidth, e.clientWidth]")
    assert log[0] <= log[1], log
    assert links.count() == 3
    for n in range(3):
        box = links.nth(n).bounding_box()
        assert box is not None and box["height"] >= 24, box
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "widget-phone.png"))
    page.close()

    page = browser.new_page(viewport={"width": 1280, "height": 720})  # a desktop keeps the floating panel
    page.goto(fake)
    page.get_by_role("button", name="Ask Harbor & Hearth").click()
    panel = page.get_by_role("dialog").bounding_box()
    assert panel is not None and panel["width"] == 340 and panel["height"] == 460, panel
    assert page.get_by_role("button", name="Ask Harbor & Hearth").is_visible()
    page.close()


# What the widget's status line says, in order: a MutationObserver on the role=status element.
LISTEN = """() => { const root = document.querySelector('body > div').shadowRoot;
    const status = root.querySelector('[role=status]'); window.said = [];
    new MutationObserver(() => { if (status.textContent) window.said.push(status.textContent); })
        .observe(status, {childList: true, characterData: true, subtree: true}); }"""


def test_widget_announces_a_streamed_answer_once_and_names_who_says_what(fake: str, browser: Any) -> None:
    """The log is a role=log that is not itself live: while the answer streams word by word a
    status line says (and shows) "Looking that up…", then reads the finished answer once; the
    customer's own question is not read back. Each message starts with a visually hidden
    speaker ("You:", "Assistant:"), the citations have a "Sources" label."""
    page = browser.new_page()
    page.goto(fake)
    page.evaluate(LISTEN)
    _ask(page, "stream please: when will my refund arrive?")
    page.locator(".rag-bot", has_text="Looking that up\u2026").wait_for(timeout=5_000)  # shown in words too
    page.locator(".rag-bot .rag-rate").wait_for(timeout=15_000)
    answer = "Refunds take 5 to 7 business days to appear on your statement once we have inspected the return."
    assert page.evaluate("window.said") == ["Looking that up\u2026", answer + " (1 source)"]
    log = page.get_by_role("log", name="Conversation")
    assert log.get_attribute("aria-live") == "off"
    assert page.locator(".rag-user").evaluate("e => e.textContent") == "You: stream please: when will my refund arrive?"
    assert page.locator(".rag-bot").evaluate("e => e.textContent").startswith("Assistant: " + answer + "Sources")
    who = page.locator(".rag-user .rag-who").bounding_box()
    assert who is not None and who["width"] <= 1 and who["height"] <= 1, who  # for a screen reader only
    assert page.get_by_role("list").get_by_role("link").count() == 1
    page.close()


def test_widget_keeps_the_focus_in_the_field_after_send_and_try_again_and_shows_the_error(
    fake: str, browser: Any
) -> None:
    """Send and Try again from the keyboard: the focus stays in the question field (Send is
    disabled while it answers, Try again goes away), and an error scrolls into view with its
    Try again button."""
    page = browser.new_page()
    page.goto(fake)
    _ask(page, "A long answer please")
    page.locator(".rag-bot .rag-rate").wait_for(timeout=15_000)
    page.get_by_label("Your question").fill("err429 stream")
    page.keyboard.press("Tab")
    assert page.evaluate(FOCUSED) == "Send"
    page.keyboard.press("Enter")
    assert page.evaluate(FOCUSED) == "Your question"
    retry = page.get_by_role("button", name="Try again")
    retry.wait_for(timeout=15_000)
    assert page.evaluate(FOCUSED) == "Your question"
    shown, log = retry.bounding_box(), page.get_by_role("log").bounding_box()
    assert shown is not None and log is not None
    assert log["y"] <= shown["y"] and shown["y"] + shown["height"] <= log["y"] + log["height"], (shown, log)
    page.keyboard.press("Shift+Tab")
    assert page.evaluate(FOCUSED) == "Try again"
    page.keyboard.press("Enter")
    assert page.evaluate(FOCUSED) == "Your question"
    page.get_by_role("button", name="Try again").wait_for(timeout=15_000)
    assert page.locator(".rag-error").count() == 1
    page.close()


def test_widget_speaks_english_left_to_right_on_a_right_to_left_page(site: dict[str, str], browser: Any) -> None:
    """On an Arabic help page the widget's English words are not mirrored (dir=ltr, lang=en on
    the widget), while each message takes its own words' direction (dir=auto)."""
    page = browser.new_page()
    url = _styled_page(site, "rtl.html", "", "")
    html = Path(site["root"], "rtl.html").read_text().replace("<html>", '<html dir="rtl" lang="ar">')
    Path(site["root"], "rtl.html").write_text(html)
    page.goto(url)
    _ask(page, "Do gift cards expire?")
    page.locator(".rag-cites a").first.wait_for(timeout=30_000)
    page.get_by_label("Your question").fill(
        "\u0645\u062a\u0649 \u064a\u0635\u0644 \u0627\u0644\u0637\u0644\u0628\u061f"
    )
    page.get_by_label("Your question").press("Enter")
    direction = "e => [getComputedStyle(e).direction, e.closest('[lang]').lang]"
    assert page.get_by_role("dialog").evaluate(direction) == ["ltr", "en"]
    assert page.locator(".rag-user").first.evaluate(direction) == ["ltr", "en"]
    assert page.locator(".rag-user").nth(1).evaluate("e => getComputedStyle(e).direction") == "rtl"
    page.close()


# An on-screen keyboard as iOS and Chrome on Android show one: only the visual viewport shrinks
# (headless Chromium has no such keyboard, so window.visualViewport is stood in for).
KEYBOARD = """(() => { const vv = new EventTarget();
    Object.assign(vv, {offsetTop: 0, offsetLeft: 0, pageTop: 0, scale: 1, width: innerWidth, height: innerHeight});
    Object.defineProperty(window, 'visualViewport', {value: vv, configurable: true});
    window.keyboard = (h) => { vv.height = innerHeight - h; vv.dispatchEvent(new Event('resize')); }; })()"""


def test_widget_on_a_phone_is_modal_and_stays_above_the_on_screen_keyboard(fake: str, browser: Any) -> None:
    """On a phone the open panel covers the page, so it is modal (aria-modal, Tab stays in it:
    the page's links are behind it), and it fits what the on-screen keyboard leaves visible.
    On a desktop it stays a non-modal panel that Tab leaves for the bubble."""
    page = browser.new_page(viewport={"width": 375, "height": 667})
    page.add_init_script(KEYBOARD)
    page.goto(fake)
    _ask(page, "When will my refund arrive?")
    page.locator(".rag-bot .rag-rate").wait_for(timeout=15_000)
    assert page.get_by_role("dialog").get_attribute("aria-modal") == "true"
    page.get_by_role("button", name="Send").focus()
    page.keyboard.press("Tab")
    assert page.evaluate(FOCUSED) == "Close"
    page.keyboard.press("Shift+Tab")
    assert page.evaluate(FOCUSED) == "Send"
    page.evaluate("window.keyboard(290)")
    field = page.get_by_label("Your question").bounding_box()
    close = page.get_by_role("button", name="Close").bounding_box()
    assert field is not None and field["y"] + field["height"] <= 667 - 290, field
    assert close is not None and close["y"] >= 0, close
    page.evaluate("window.keyboard(0)")
    assert page.get_by_role("dialog").bounding_box() == {"x": 0, "y": 0, "width": 375, "height": 667}
    page.close()

    page = browser.new_page(viewport={"width": 1280, "height": 720})
    page.goto(fake)
    page.get_by_role("button", name="Ask Harbor & Hearth").click()
    assert page.get_by_role("dialog").get_attribute("aria-modal") == "false"
    page.get_by_label("Your question").fill("a question")
    page.get_by_role("button", name="Send").focus()
    page.keyboard.press("Tab")
    assert page.evaluate(FOCUSED) == "Ask Harbor & Hearth"
    page.close()


def _contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two computed colours ("rgb(r, g, b)")."""

    def luminance(colour: str) -> float:
        channels = [int(c) / 255 for c in colour[colour.index("(") + 1 : -1].split(",")[:3]]
        r, g, bl = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
        return 0.2126 * r + 0.7152 * g + 0.0722 * bl

    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_widget_polish_escape_rating_words_handoff_line_busy_send_and_one_widget(
    site: dict[str, str], fake: str, browser: Any
) -> None:
    """Escape closes the widget without reaching the page's own handlers; the rating buttons say
    their names in words (not every computer has an emoji font); the hand-off sentence has a
    line of its own (not a one-word column beside the buttons); Send looks disabled while an
    answer comes; the question field's edge and the rating buttons' borders reach 3:1; a second
    widget tag on a page says in the console that it is ignored."""
    page = browser.new_page()
    page.goto(fake)
    page.evaluate("document.addEventListener('keydown', e => { if (e.key === 'Escape') window.hostEscapes = 1; })")
    _ask(page, "stream please, and handoff")
    send = page.get_by_role("button", name="Send")
    background = "e => getComputedStyle(e).backgroundColor"
    assert send.is_disabled() and send.evaluate(background) != "rgb(47, 91, 234)"
    page.locator(".rag-bot .rag-rate").wait_for(timeout=15_000)
    assert send.is_enabled() and send.evaluate(background) == "rgb(47, 91, 234)"
    for name in ("Helpful", "Not helpful"):
        assert page.get_by_role("button", name=name, exact=True).inner_text().endswith(name)
    told = page.locator(".rag-handoff").bounding_box()
    assert told is not None and told["width"] > 200, told
    edge = page.locator(".rag-form").evaluate("e => getComputedStyle(e).borderTopColor")
    assert _contrast(edge, "rgb(255, 255, 255)") >= 3, edge
    rim = page.get_by_role("button", name="Helpful", exact=True).evaluate("e => getComputedStyle(e).borderTopColor")
    assert _contrast(rim, "rgb(242, 242, 244)") >= 3, rim
    page.get_by_label("Your question").press("Escape")
    assert not page.get_by_role("dialog").is_visible()
    assert page.evaluate("window.hostEscapes") is None
    page.close()

    html = PAGE.format(service=site["service"], endpoint=site["service"])
    tag = html[html.index("<script") : html.index("</script>") + len("</script>")]
    (Path(site["root"]) / "two.html").write_text(html.replace(tag, tag + tag))
    page = browser.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    page.goto(site["page"].replace("index.html", "two.html"))
    assert page.get_by_role("button", name="Ask Harbor & Hearth").count() == 1
    assert any("second widget tag" in line for line in console), console
    page.close()


def test_widget_offers_try_again_only_where_it_can_help_and_says_links_open_a_new_tab(fake: str, browser: Any) -> None:
    """A chat that is not set up (401) or a question that is too long (413) is not offered
    "Try again" (the same question would fail the same way), though the question is kept; a
    refusal for being busy (429) is. Links that open a new tab say so to a screen reader (and
    show an arrow); the question field's text is 16 px (a phone does not zoom in on it)."""
    from playwright.sync_api import expect

    page = browser.new_page()
    page.goto(fake)
    _ask(page, "err401")
    page.locator(".rag-error", has_text="isn't available").wait_for(timeout=15_000)
    field = page.get_by_label("Your question")
    field.fill("err413 " + "words " * 20)
    field.press("Enter")
    page.locator(".rag-error", has_text="too long").wait_for(timeout=15_000)
    assert page.get_by_role("button", name="Try again").count() == 0
    assert field.input_value().startswith("err413")
    field.fill("err429")
    field.press("Enter")
    page.get_by_role("button", name="Try again").wait_for(timeout=15_000)
    assert page.get_by_role("button", name="Try again").count() == 1
    field.fill("when will my refund arrive?")
    field.press("Enter")
    link = page.locator(".rag-cites a").first
    link.wait_for(timeout=15_000)
    assert link.get_attribute("target") == "_blank"
    expect(link).to_have_accessible_description("opens in a new tab")
    assert link.inner_text() == "returns-and-refunds.md"  # the arrow is not part of its text
    assert link.evaluate("e => getComputedStyle(e, '::after').content").startswith('"\u2197"')
    assert field.evaluate("e => parseFloat(getComputedStyle(e).fontSize)") >= 16
    page.close()


def test_widget_titles_its_panel_with_a_heading_and_says_when_a_paste_is_cut(fake: str, browser: Any) -> None:
    """The panel's title is a heading. A paste longer than data-max-chars is cut there (the
    field's maxlength), and the widget says so, on screen and to a screen reader, instead of
    losing the rest without a word; the note goes once the question is sent."""
    page = browser.new_page()
    page.goto(fake.replace("fake.html", "short.html"))  # data-max-chars="20"
    page.evaluate(LISTEN)
    page.get_by_role("button", name="Ask Harbor & Hearth").click()
    assert page.get_by_role("heading", name="Ask Harbor & Hearth").is_visible()
    field = page.get_by_label("Your question")
    field.fill("When will my refund arrive")
    note = page.locator(".rag-limit", has_text="Questions can be up to 20 characters")
    assert field.input_value() == "When will my refund " and note.is_visible()
    assert page.evaluate("window.said") == ["Questions can be up to 20 characters; the rest was left out."]
    field.press("Enter")
    page.locator(".rag-bot .rag-rate").wait_for(timeout=15_000)
    assert not note.is_visible()
    field.press_sequentially("Where is my parcel?!")  # typed to exactly 20: nothing was left out
    assert note.is_visible() and note.inner_text() == "Questions can be up to 20 characters."
    page.close()
