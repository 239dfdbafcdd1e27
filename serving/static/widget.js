/*
 * rag-service chat widget. One tag on any page:
 *
 *   <script src="https://support.example.com/widget.js"
 *           data-endpoint="https://support.example.com"   (default: where this script came from)
 *           data-collection="default"
 *           data-title="Ask us"
 *           data-link-base="https://help.example.com/articles/"
 *           data-api-key="rk_..."   (when the service has API keys: a public key made for
 *                                     this collection only, `rag keys create --public`)
 *           data-contact="https://example.com/contact"   (optional: how a customer reaches a
 *                                     person; a URL, an email address or a line of text)
 *           data-timeout="30"       (seconds of silence before the widget gives up on an answer)
 *           data-max-chars="2000"></script>   (the service's RAG_MAX_QUESTION_CHARS)
 *
 * A chat bubble opens a panel; answers stream in as they are generated (POST /v1/query with
 * "stream": true, read as Server-Sent Events), then the citations appear as links: to the
 * document's own page where the service knows it (a citation's url), else data-link-base +
 * the document id; only under data-link-base, or on its or the page's own site (a PDF at the
 * passage's page, "#page=N", which the title names too). The conversation so far is sent
 * as "history", so follow-up questions work, and it is kept for the browser tab's session
 * (a reload or another help page keeps it). Each answer has thumbs up / down buttons (POST
 * /v1/feedback); a thumbs-down, or an answer the service could not give, says the team has
 * been told (the service hands it over) and, with data-contact, how to reach a person. A
 * failure (no service, a refusal, an answer that stalls) says so in words for a customer (the
 * service's own message goes to the console), keeps the question and offers to try again
 * (where that can help).
 * Escape closes the panel. The widget lives in a shadow root (the page's CSS does not reach it)
 * and needs no 'unsafe-inline' style-src under a Content-Security-Policy: allow this script's
 * origin in script-src and connect-src. No dependencies, no build step, no CDN.
 */
(function () {
  "use strict";
  var script = document.currentScript;
  if (script && window.__ragWidget) console.warn("rag widget: a second widget tag on this page is ignored");
  if (!script || window.__ragWidget) return;
  window.__ragWidget = true;
  var data = script.dataset;
  var endpoint = (data.endpoint || new URL(script.src, location.href).origin).replace(/\/$/, "");
  var collection = data.collection || null;
  var title = data.title || "Ask a question";
  var linkBase = data.linkBase || "";
  var apiKey = data.apiKey || "";
  var contact = data.contact || "";
  var timeoutMs = 1000 * (parseFloat(data.timeout) || 30);
  var maxChars = parseInt(data.maxChars, 10) || 2000;
  var history = [];
  var saved = [];  // what the log shows, for the rest of the tab's session
  var storageKey = "rag-widget:" + endpoint + ":" + (collection || "");

  // Styles live in a shadow root, so the host page's CSS cannot reach the widget (a reset sheet's
  // "button{display:none!important}", a dark theme's colours) and the widget's cannot leak out.
  // They are applied as a constructable stylesheet, which a Content-Security-Policy without
  // 'unsafe-inline' in style-src allows; where that is missing, a <style> carrying this
  // script's nonce.
  var css =
    ":host{all:initial!important;display:block!important}" +
    ".rag-w{position:fixed;right:20px;bottom:20px;z-index:2147483000;max-width:calc(100vw - 20px);font:14px/1.4 system-ui,sans-serif;color:#1b1b1f;color-scheme:light;text-align:start}" +
    "*,*::before,*::after{box-sizing:border-box}" +
    "button,input{font:inherit;letter-spacing:normal;text-transform:none;margin:0;color:#1b1b1f;background:#fff}" +
    "button{cursor:pointer;border:1px solid transparent}" +
    ".rag-bubble{display:block;margin-left:auto;width:56px;height:56px;padding:0;border-radius:50%;background:#2f5bea;color:#fff;font-size:26px;line-height:1;box-shadow:0 4px 14px rgba(0,0,0,.25)}" +
    ".rag-panel{display:none;flex-direction:column;width:min(340px,calc(100vw - 30px));height:min(460px,calc(100vh - 96px));height:min(460px,calc(100dvh - 96px));background:#fff;color:#1b1b1f;border:1px solid transparent;border-radius:12px;box-shadow:0 8px 30px rgba(0,0,0,.25);overflow:hidden;margin-bottom:10px}" +
    ".rag-open .rag-panel{display:flex}" +
    // A phone, or a landscape one with its keyboard up: the open panel takes the whole screen
    // (the bubble hides; Close closes), so the header, the log and the field all fit.
    "@media (max-width:420px),(max-height:560px){.rag-w{right:10px;bottom:10px}" +
    ".rag-w.rag-open{top:0;right:0;bottom:0;left:0;max-width:none;height:100vh;height:100dvh}" +
    ".rag-open .rag-panel{width:100%;height:100%;margin:0;border-radius:0;box-shadow:none}" +
    ".rag-open .rag-bubble{display:none}}" +
    ".rag-head{flex-shrink:0;background:#2f5bea;color:#fff;padding:10px 14px;font-weight:600;display:flex;justify-content:space-between;align-items:center;gap:8px}" +
    ".rag-head h2{margin:0;font:inherit;font-weight:600;overflow-wrap:anywhere}" +
    ".rag-limit{flex-shrink:0;padding:6px 12px;font-size:12px;background:#fff4e0;color:#6b4200;border-top:1px solid #767680}" +
    ".rag-limit[hidden]{display:none}" +
    ".rag-head button{background:#2f5bea;color:#fff;font-size:18px;padding:0 4px}" +
    ".rag-log{flex:1 1 auto;min-height:0;overflow-y:auto;padding:10px;display:flex;flex-direction:column;gap:8px}" +
    ".rag-msg{position:relative;padding:8px 10px;border:1px solid transparent;border-radius:10px;max-width:90%;white-space:pre-wrap;overflow-wrap:anywhere}" +
    ".rag-user{align-self:flex-end;background:#e8edff;color:#1b1b1f}" +
    ".rag-bot{align-self:flex-start;background:#f2f2f4;color:#1b1b1f}" +
    ".rag-error{align-self:stretch;background:#fdecec;color:#8a1c1c}" +
    ".rag-sr{position:absolute;width:1px;height:1px;margin:-1px;padding:0;border:0;overflow:hidden;clip:rect(0 0 0 0);clip-path:inset(50%);white-space:nowrap}" +
    ".rag-cites-label{margin-top:6px;font-size:12px;font-weight:600;color:#555}" +
    ".rag-cites ul{list-style:none;margin:0;padding:0}" +
    ".rag-cites{font-size:12px}.rag-cites a,.rag-cites span{display:block;min-height:24px;padding:4px 0;color:#2f5bea;overflow-wrap:anywhere}" +
    ".rag-cites span{color:#1b1b1f}" +
    ".rag-w a{color:#2f5bea}" +
    ".rag-w a[target=_blank]::after{content:\"\\2197\" / \"\"}" +
    ".rag-rate{margin-top:6px;display:flex;flex-wrap:wrap;gap:6px;align-items:center;font-size:12px;color:#555;white-space:normal}" +
    ".rag-note{flex-basis:100%}" +
    ".rag-rate button{min-height:24px;border:1px solid #767680;border-radius:6px;background:#fff;color:#1b1b1f;padding:2px 8px}" +
    ".rag-form{flex-shrink:0;display:flex;border-top:1px solid #767680;background:#fff}" +
    ".rag-form input{flex:1;min-width:0;border:1px solid transparent;padding:12px;font-size:16px;background:#fff;color:#1b1b1f}" +
    ".rag-form input::placeholder{color:#6b6b73;opacity:1}" +
    ".rag-retry{margin-left:6px;border:1px solid #8a1c1c;border-radius:6px;background:#fff;color:#8a1c1c;padding:1px 8px}" +
    ".rag-form button{background:#2f5bea;color:#fff;padding:0 16px}" +
    ".rag-form button:disabled{background:#6b6b73;cursor:default}" +
    // A two-tone ring (a white band inside a dark outline) shows on any page and on the blue
    // header; forced colours drop the white band and paint the outline in the system's colour.
    // The question field and Send sit on the panel's edge, whose overflow would clip a ring
    // outside them: theirs is drawn inside.
    ":focus-visible{outline:2px solid #1b1b1f;outline-offset:2px;box-shadow:0 0 0 2px #fff}" +
    ".rag-form input:focus-visible,.rag-form button:focus-visible{outline-offset:-4px;box-shadow:inset 0 0 0 2px #fff}";

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text) node.textContent = text;
    return node;
  }

  var host = el("div");
  var shadow = host.attachShadow ? host.attachShadow({ mode: "open" }) : host;
  var sheet = null;
  try {
    if (shadow !== host && "adoptedStyleSheets" in ShadowRoot.prototype && "replaceSync" in CSSStyleSheet.prototype) {
      sheet = new CSSStyleSheet();
      sheet.replaceSync(css);
      shadow.adoptedStyleSheets = [sheet];
    }
  } catch (e) { sheet = null; }
  if (!sheet) {
    var style = el("style");
    if (script.nonce) style.nonce = script.nonce;  // a CSP with a nonce for this script allows it
    style.textContent = css;
    shadow.appendChild(style);
  }
  var root = el("div", "rag-w");
  root.dir = "ltr";  // the widget's own words are English: a right-to-left page must not mirror them
  root.lang = "en";
  var panel = el("div", "rag-panel");
  panel.id = "rag-panel";
  panel.setAttribute("role", "dialog");
  panel.setAttribute("aria-label", title);
  var head = el("div", "rag-head");
  head.appendChild(el("h2", null, title));  // a heading: a screen reader's way into the panel
  var close = el("button", null, "\u00d7");
  close.setAttribute("aria-label", "Close");
  head.appendChild(close);
  var log = el("div", "rag-log");
  // The log is not itself live (each streamed token would be read, and the customer's own
  // question read back): a separate status line says "Looking that up…", then the finished
  // answer once.
  log.setAttribute("role", "log");
  log.setAttribute("aria-live", "off");
  log.setAttribute("aria-label", "Conversation");
  var status = el("div", "rag-sr");
  status.setAttribute("role", "status");
  var form = el("form", "rag-form");
  var input = el("input");
  input.placeholder = "Type your question";
  input.maxLength = maxChars;
  input.setAttribute("aria-label", "Your question");
  var send = el("button", null, "Send");
  send.type = "submit";
  form.appendChild(input);
  form.appendChild(send);
  panel.appendChild(head);
  panel.appendChild(log);
  var limit = el("div", "rag-limit");  // a paste cut at data-max-chars says so
  limit.hidden = true;
  panel.appendChild(limit);
  panel.appendChild(form);
  panel.appendChild(status);
  var newTab = el("span", null, "opens in a new tab");  // the links' description
  newTab.id = "rag-new-tab";
  newTab.hidden = true;
  panel.appendChild(newTab);
  var bubble = el("button", "rag-bubble", "?");
  bubble.setAttribute("aria-label", title);
  bubble.setAttribute("aria-controls", "rag-panel");
  bubble.setAttribute("aria-expanded", "false");
  root.appendChild(panel);
  root.appendChild(bubble);

  // On a small screen the open panel covers the page: it is modal there (Tab stays in it, for
  // the page's controls are hidden behind it) and follows the visual viewport, which an
  // on-screen keyboard shrinks without resizing the page (iOS, Chrome on Android).
  var small = window.matchMedia ? window.matchMedia("(max-width:420px),(max-height:560px)") : null;

  function fullScreen() { return !!(small && small.matches) && root.classList.contains("rag-open"); }

  function fit() {
    var vv = window.visualViewport;
    var track = fullScreen() && vv && Math.abs((vv.scale || 1) - 1) < 0.01;  // not while pinch-zoomed
    root.style.top = track ? vv.offsetTop + "px" : "";
    root.style.height = track ? vv.height + "px" : "";
    panel.setAttribute("aria-modal", fullScreen() ? "true" : "false");
  }
  if (window.visualViewport) {
    window.visualViewport.addEventListener("resize", fit);
    window.visualViewport.addEventListener("scroll", fit);
  }
  if (small && small.addEventListener) small.addEventListener("change", fit);

  function setOpen(open) {
    root.classList.toggle("rag-open", open);
    bubble.setAttribute("aria-expanded", open ? "true" : "false");
    fit();
    if (open) input.focus();
    else bubble.focus();
  }
  bubble.addEventListener("click", function () { setOpen(!root.classList.contains("rag-open")); });
  close.addEventListener("click", function () { setOpen(false); });
  root.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && root.classList.contains("rag-open")) {
      setOpen(false);
      event.stopPropagation();  // handled: the page's own Escape handlers (its menus, its dialogs) stay out of it
    }
    if (event.key !== "Tab" || !fullScreen()) return;
    var stops = Array.prototype.filter.call(
      panel.querySelectorAll("button, a[href], input, [tabindex='0']"),
      function (node) { return !node.disabled && node.getClientRects().length; });
    var first = stops[0], last = stops[stops.length - 1];
    var here = shadow.activeElement || document.activeElement;
    if (event.shiftKey ? here === first : here === last) {
      event.preventDefault();
      (event.shiftKey ? last : first).focus();
    }
  });

  var SPEAKER = { "rag-user": "You: ", "rag-bot": "Assistant: ", "rag-error": "Error: " };
  var THINKING = "Looking that up\u2026";

  // A message: who says it (for a screen reader: colour and side tell it on screen), then the
  // words, in their own direction (an answer in Arabic reads right to left).
  function say(cls, text) {
    var node = el("div", "rag-msg " + cls);
    node.dir = "auto";
    var who = el("span", "rag-sr rag-who", SPEAKER[cls]);
    who.dir = "ltr";  // not the message's first letters: dir=auto skips it
    node.appendChild(who);
    node.appendChild(el("span", "rag-text", text));
    log.appendChild(node);
    scrollDown();
    return node;
  }

  function words(node, text) { node.querySelector(".rag-text").textContent = text; }
  function scrollDown() { log.scrollTop = log.scrollHeight; }
  function announce(text) { status.textContent = text; }

  // A citation links under data-link-base only (a document id with ".." segments, or one that
  // would name another host, gets no link), or to a full URL on data-link-base's site (the
  // page's own, without a data-link-base): never elsewhere.
  function citationHref(id) {
    var base;
    try { base = linkBase ? new URL(linkBase, location.href).href : null; } catch (e) { base = null; }
    if (/^[a-z][a-z0-9+.-]*:/i.test(id)) {
      var url;
      try { url = new URL(id); } catch (e) { return null; }
      var home = base ? new URL(base).origin : location.origin;
      return /^https?:$/.test(url.protocol) && url.origin === home ? url.href : null;
    }
    var parts = id.split("/");
    if (!base || parts.some(function (p) { return p === ".." || p === "."; })) return null;
    var href = base + parts.map(encodeURIComponent).join("/");
    var under = base.replace(/[?#].*$/, "");
    var checked;
    try { checked = new URL(href); } catch (e) { return null; }
    if (checked.origin !== new URL(base).origin) return null;  // "help.example.com" + ".evil.com/x"
    return checked.href.indexOf(under.slice(0, under.lastIndexOf("/") + 1)) === 0 ? href : null;
  }

  function showCitations(node, citations) {
    if (!citations || !citations.length) return;
    var box = el("div", "rag-cites");
    box.dir = "ltr";
    box.appendChild(el("div", "rag-cites-label", "Sources"));
    var list = el("ul");
    box.appendChild(list);
    var seen = {};
    citations.forEach(function (c) {
      if (seen[c.document_id]) return;
      seen[c.document_id] = true;
      var href = (c.url && citationHref(c.url)) || citationHref(c.document_id);  // its page, if the service knows it
      if (href && c.page && href.indexOf("#") < 0) href += "#page=" + c.page;  // a PDF opens at the passage's page
      var a = el(href ? "a" : "span", null, (c.title || c.document_id) + (c.page ? " (p. " + c.page + ")" : ""));
      if (href) {
        a.href = href;
        a.target = "_blank";
        a.rel = "noopener";
        a.setAttribute("aria-describedby", "rag-new-tab");
      }
      a.dataset.documentId = c.document_id;
      a.dir = "auto";
      var item = el("li");
      item.appendChild(a);
      list.appendChild(item);
    });
    node.appendChild(box);
    return list.children.length;
  }

  // Honest about what happens next: the service hands the question to the team; a person can
  // reply only to a customer who contacts them (data-contact says how).
  var TOLD = "Our team has been told about this question.";

  function contactNode() {
    if (!contact) return null;
    var box = el("span", "rag-contact", " To hear back from a person: ");
    var link = null;
    if (/^https?:\/\//i.test(contact)) link = el("a", null, "contact us");
    else if (/^[^\s@]+@[^\s@]+$/.test(contact)) link = el("a", null, contact);
    if (link) {
      link.href = /@/.test(contact) && !/^https?:/i.test(contact) ? "mailto:" + contact : contact;
      link.target = "_blank";
      link.rel = "noopener";
      link.setAttribute("aria-describedby", "rag-new-tab");
      box.appendChild(link);
      box.appendChild(document.createTextNode("."));
    } else {
      box.appendChild(document.createTextNode(contact));
    }
    return box;
  }

  function showRating(node, answerId, needsHuman) {
    var box = el("div", "rag-rate");
    box.dir = "ltr";
    box.tabIndex = -1;  // focus lands here once a vote replaces the buttons
    if (needsHuman) {  // a line of its own, above the buttons
      var note = el("span", "rag-note");
      note.appendChild(el("span", "rag-handoff", TOLD));
      var reach = contactNode();
      if (reach) note.appendChild(reach);
      box.appendChild(note);
    }
    [["up", "\ud83d\udc4d", "Helpful"], ["down", "\ud83d\udc4e", "Not helpful"]].forEach(function (spec) {
      var button = el("button", "rag-rate-" + spec[0]);
      var glyph = el("span", null, spec[1] + " ");  // words too: not every computer has an emoji font
      glyph.setAttribute("aria-hidden", "true");
      button.appendChild(glyph);
      button.appendChild(document.createTextNode(spec[2]));
      button.type = "button";
      button.setAttribute("aria-label", spec[2]);
      button.addEventListener("click", function () { rate(box, answerId, spec[0]); });
      box.appendChild(button);
    });
    node.appendChild(box);
  }

  async function rate(box, answerId, rating) {
    var headers = { "Content-Type": "application/json" };
    if (apiKey) headers.Authorization = "Bearer " + apiKey;
    box.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
    try {
      var response = await fetch(endpoint + "/v1/feedback", {
        method: "POST",
        headers: headers,
        body: JSON.stringify({ answer_id: answerId, rating: rating, conversation: history.slice(-20) }),
      });
      if (!response.ok) throw new Error("HTTP " + response.status);
      box.textContent = rating === "down" ? "Thanks for telling us. " + TOLD : "Thanks for the feedback.";
      if (rating === "down") { var reach = contactNode(); if (reach) box.appendChild(reach); }
    } catch (err) {
      box.textContent = "Your feedback could not be sent.";
    }
    box.focus();
  }

  // What a customer reads; the service's own words (meant for whoever runs it) go to the console.
  var UNREACHABLE = "Sorry, the help service can't be reached right now. Please try again in a moment.";
  var SLOW = "Sorry, this is taking longer than usual. Please try again in a moment.";
  var NOT_HERE = "This help chat isn't available right now. Please contact us another way.";
  var TOO_LONG = "That message is too long. Please shorten it and try again.";

  function customerMessage(status, message) {
    if (status >= 500) return UNREACHABLE;
    if (status === 429) return "We're getting a lot of questions right now. Please try again in a few seconds.";
    if (status === 401 || status === 403) return NOT_HERE;
    if (status === 413 || /characters; the limit/.test(message)) return TOO_LONG;
    if (status === 408) return SLOW;
    return "Sorry, that message couldn't be answered. Please rephrase it and try again.";
  }

  function failed(node, question, shown, detail) {
    if (detail) console.warn("rag widget: " + detail);
    node.className = "rag-msg rag-error";
    node.querySelector(".rag-who").textContent = SPEAKER["rag-error"];
    words(node, shown);
    if (!input.value) input.value = question;  // the customer's words are never lost
    announce(shown);
    scrollDown();
    if (shown === NOT_HERE || shown === TOO_LONG) return;  // asking the same again cannot help
    var retry = el("button", "rag-retry", "Try again");
    retry.type = "button";
    retry.addEventListener("click", function () {
      if (send.disabled) return;  // one question at a time
      input.focus();  // before this button goes: the focus must not fall to the page
      node.remove();
      if (input.value === question) input.value = "";
      run(question);
    });
    node.appendChild(document.createTextNode(" "));
    node.appendChild(retry);
    scrollDown();  // the message and Try again, not half of it
  }

  function remember(entry) {
    saved.push(entry);
    try { sessionStorage.setItem(storageKey, JSON.stringify(saved.slice(-40))); } catch (e) { /* storage off */ }
  }

  function restore() {
    var entries;
    try { entries = JSON.parse(sessionStorage.getItem(storageKey) || "[]"); } catch (e) { entries = []; }
    if (!Array.isArray(entries)) return;
    entries.forEach(function (entry) {
      if (!entry || typeof entry.text !== "string") return;
      var node = say(entry.role === "user" ? "rag-user" : "rag-bot", entry.text);
      if (entry.role === "assistant") {
        showCitations(node, entry.citations);
        history.push({ role: "user", content: entry.question || "" }, { role: "assistant", content: entry.text });
      }
      saved.push(entry);
    });
  }

  async function ask(question) {
    var node = say("rag-bot", THINKING);
    announce(THINKING);
    var body = { question: question, stream: true, history: history.slice(-20) };
    if (collection) body.collection = collection;
    var response;
    var headers = { "Content-Type": "application/json", Accept: "text/event-stream" };
    if (apiKey) headers.Authorization = "Bearer " + apiKey;
    // Silence past data-timeout ends the wait (a hung service must not leave "..." for ever).
    var controller = new AbortController();
    var timedOut = false;
    var timer = null;
    function waitAgain() {
      clearTimeout(timer);
      timer = setTimeout(function () { timedOut = true; controller.abort(); }, timeoutMs);
    }
    waitAgain();
    try {
      response = await fetch(endpoint + "/v1/query", {
        method: "POST",
        headers: headers,
        body: JSON.stringify(body),
        signal: controller.signal,
      });
    } catch (err) {
      clearTimeout(timer);
      failed(node, question, timedOut ? SLOW : UNREACHABLE, timedOut ? "no reply within the timeout" : String(err));
      return;
    }
    if (!response.ok) {
      var message = "HTTP " + response.status;
      try { message = (await response.json()).error.message; } catch (e) { /* not JSON, or it stalled */ }
      clearTimeout(timer);
      failed(node, question, customerMessage(response.status, message), "HTTP " + response.status + ": " + message);
      return;
    }
    var reader = response.body.getReader();
    var decoder = new TextDecoder();
    var buffer = "";
    var text = "";
    var finished = false;
    while (!finished) {
      var chunk;
      try { chunk = await reader.read(); } catch (err) {
        clearTimeout(timer);
        failed(node, question, timedOut ? SLOW : UNREACHABLE, timedOut ? "the answer stalled" : String(err));
        return;
      }
      if (chunk.done) break;
      // Normalise the whole buffer: a "\r\n" split across two reads must still end a line.
      buffer = (buffer + decoder.decode(chunk.value, { stream: true })).replace(/\r\n/g, "\n");
      var parts = buffer.split("\n\n");
      buffer = parts.pop();
      parts.forEach(function (raw) {
        var event = "message", dataLines = [];
        raw.split("\n").forEach(function (line) {
          if (line.indexOf("event:") === 0) event = line.slice(6).trim();
          else if (line.indexOf("data:") === 0) dataLines.push(line.slice(5).replace(/^ /, ""));
        });
        if (!dataLines.length || finished) return;
        waitAgain();  // an event, not a keep-alive comment (": ping"), is news from the answer
        var payload;
        try { payload = JSON.parse(dataLines.join("\n")); }
        catch (err) { failed(node, question, UNREACHABLE, "a garbled reply"); finished = true; return; }
        if (event === "token") {
          text += payload.text;
          words(node, text);
        } else if (event === "done") {
          words(node, payload.answer);  // authoritative
          var sources = showCitations(node, payload.citations) || 0;
          announce(payload.answer + (sources ? " (" + sources + (sources === 1 ? " source)" : " sources)") : "") +
                   (payload.needs_human ? " " + TOLD : ""));
          if (payload.answer_id && payload.answer_kind !== "small_talk") showRating(node, payload.answer_id, payload.needs_human);
          history.push({ role: "user", content: question }, { role: "assistant", content: payload.answer });
          remember({ role: "assistant", question: question, text: payload.answer, citations: payload.citations || [] });
          finished = true;
        } else if (event === "error") {
          var error = payload.error || {};
          var shown = error.type === "service_unavailable" ? UNREACHABLE : customerMessage(400, error.message || "");
          failed(node, question, shown, (error.code || "error") + ": " + error.message);
          finished = true;
        }
      });
      scrollDown();
    }
    clearTimeout(timer);
    if (!finished) failed(node, question, UNREACHABLE, "the answer was cut off");
  }

  function run(question) {
    input.focus();  // before Send is disabled: a disabled button drops the focus to the page
    send.disabled = true;
    return ask(question).finally(function () { send.disabled = false; input.focus(); });
  }

  function submit(question) {
    say("rag-user", question);
    remember({ role: "user", text: question });
    return run(question);
  }

  // Whether the text being put in (typed, pasted, dropped) is longer than the room left, so the
  // field's maxlength cuts it: then the note says the rest was left out, not only the limit.
  var cut = false;
  input.addEventListener("beforeinput", function (event) {
    var text = event.data || (event.dataTransfer && event.dataTransfer.getData("text/plain")) || "";
    var selected = (input.selectionEnd || 0) - (input.selectionStart || 0);
    cut = text.length > maxChars - (input.value.length - selected);
  });

  input.addEventListener("input", function () {
    var full = input.value.length >= maxChars;
    var text = "Questions can be up to " + maxChars + " characters" + (cut ? "; the rest was left out." : ".");
    cut = false;
    if (full && (limit.hidden || limit.textContent !== text)) {
      limit.textContent = text;
      announce(text);
    }
    limit.hidden = !full;
  });

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var question = input.value.trim();
    if (!question) return;
    input.value = "";
    limit.hidden = true;
    submit(question);
  });

  shadow.appendChild(root);

  function mount() {
    document.body.appendChild(host);
    restore();
  }
  if (document.body) mount(); else document.addEventListener("DOMContentLoaded", mount);
})();
