/*
 * rag-service chat widget. One tag on any page:
 *
 *   <script src="https://support.example.com/widget.js"
 *           data-endpoint="https://support.example.com"   (default: where this script came from)
 *           data-collection="default"
 *           data-title="Ask us"
 *           data-link-base="https://help.example.com/articles/"
 *           data-api-key="rk_..."></script>   (when the service has API keys: a key made
 *                                               for this collection only, since the page shows it)
 *
 * A chat bubble opens a panel; answers stream in as they are generated (POST /v1/query with
 * "stream": true, read as Server-Sent Events), then the citations appear as links. The
 * conversation so far is sent as "history", so follow-up questions work. Each answer has
 * thumbs up / down buttons (POST /v1/feedback); a thumbs-down, or an answer the service could
 * not give, says a person will follow up (the service hands it over). If the service
 * cannot be reached the panel says so. No dependencies, no build step, no CDN.
 */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script || window.__ragWidget) return;
  window.__ragWidget = true;
  var data = script.dataset;
  var endpoint = (data.endpoint || new URL(script.src, location.href).origin).replace(/\/$/, "");
  var collection = data.collection || null;
  var title = data.title || "Ask a question";
  var linkBase = data.linkBase || "";
  var apiKey = data.apiKey || "";
  var history = [];

  var css =
    ".rag-w{position:fixed;right:20px;bottom:20px;z-index:2147483000;font:14px/1.4 system-ui,sans-serif;color:#1b1b1f}" +
    ".rag-w *{box-sizing:border-box}" +
    ".rag-bubble{display:block;margin-left:auto;width:56px;height:56px;border-radius:50%;border:0;background:#2f5bea;color:#fff;font-size:26px;cursor:pointer;box-shadow:0 4px 14px rgba(0,0,0,.25)}" +
    ".rag-panel{display:none;flex-direction:column;width:340px;height:460px;background:#fff;border-radius:12px;box-shadow:0 8px 30px rgba(0,0,0,.25);overflow:hidden;margin-bottom:10px}" +
    ".rag-open .rag-panel{display:flex}" +
    ".rag-head{background:#2f5bea;color:#fff;padding:10px 14px;font-weight:600;display:flex;justify-content:space-between}" +
    ".rag-head button{background:none;border:0;color:#fff;font-size:18px;cursor:pointer}" +
    ".rag-log{flex:1;overflow-y:auto;padding:10px;display:flex;flex-direction:column;gap:8px}" +
    ".rag-msg{padding:8px 10px;border-radius:10px;max-width:90%;white-space:pre-wrap}" +
    ".rag-user{align-self:flex-end;background:#e8edff}" +
    ".rag-bot{align-self:flex-start;background:#f2f2f4}" +
    ".rag-error{align-self:stretch;background:#fdecec;color:#8a1c1c}" +
    ".rag-cites{margin-top:6px;font-size:12px}.rag-cites a{display:block;color:#2f5bea}" +
    ".rag-rate{margin-top:6px;display:flex;gap:6px;align-items:center;font-size:12px;color:#555}" +
    ".rag-rate button{border:1px solid #ccd;border-radius:6px;background:#fff;cursor:pointer;padding:2px 8px}" +
    ".rag-form{display:flex;border-top:1px solid #ddd}" +
    ".rag-form input{flex:1;border:0;padding:12px;font:inherit;outline:none}" +
    ".rag-form button{border:0;background:#2f5bea;color:#fff;padding:0 16px;cursor:pointer}";

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text) node.textContent = text;
    return node;
  }

  var root = el("div", "rag-w");
  var style = el("style");
  style.textContent = css;
  var panel = el("div", "rag-panel");
  panel.setAttribute("role", "dialog");
  panel.setAttribute("aria-label", title);
  var head = el("div", "rag-head");
  head.appendChild(el("span", null, title));
  var close = el("button", null, "\u00d7");
  close.setAttribute("aria-label", "Close");
  head.appendChild(close);
  var log = el("div", "rag-log");
  log.setAttribute("aria-live", "polite");
  var form = el("form", "rag-form");
  var input = el("input");
  input.placeholder = "Type your question";
  input.setAttribute("aria-label", "Your question");
  var send = el("button", null, "Send");
  send.type = "submit";
  form.appendChild(input);
  form.appendChild(send);
  panel.appendChild(head);
  panel.appendChild(log);
  panel.appendChild(form);
  var bubble = el("button", "rag-bubble", "?");
  bubble.setAttribute("aria-label", title);
  root.appendChild(style);
  root.appendChild(panel);
  root.appendChild(bubble);

  bubble.addEventListener("click", function () {
    root.classList.toggle("rag-open");
    if (root.classList.contains("rag-open")) input.focus();
  });
  close.addEventListener("click", function () { root.classList.remove("rag-open"); });

  function say(cls, text) {
    var node = el("div", "rag-msg " + cls, text);
    log.appendChild(node);
    log.scrollTop = log.scrollHeight;
    return node;
  }

  function showCitations(node, citations) {
    if (!citations || !citations.length) return;
    var box = el("div", "rag-cites");
    var seen = {};
    citations.forEach(function (c) {
      if (seen[c.document_id]) return;
      seen[c.document_id] = true;
      var a = el("a", null, c.title || c.document_id);
      var href = /^https?:\/\//.test(c.document_id) ? c.document_id : linkBase ? linkBase + c.document_id.split("/").map(encodeURIComponent).join("/") : "#";
      a.href = href;
      a.target = "_blank";
      a.rel = "noopener";
      a.dataset.documentId = c.document_id;
      box.appendChild(a);
    });
    node.appendChild(box);
  }

  var HANDOFF = "A person from our team will follow up on this.";

  function showRating(node, answerId, needsHuman) {
    var box = el("div", "rag-rate");
    if (needsHuman) box.appendChild(el("span", "rag-handoff", HANDOFF + " "));
    [["up", "\ud83d\udc4d", "Helpful"], ["down", "\ud83d\udc4e", "Not helpful"]].forEach(function (spec) {
      var button = el("button", "rag-rate-" + spec[0], spec[1]);
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
      box.textContent = rating === "down" ? "Thanks for telling us. " + HANDOFF : "Thanks for the feedback.";
    } catch (err) {
      box.textContent = "Your feedback could not be sent.";
    }
  }

  function unreachable(node, detail) {
    node.className = "rag-msg rag-error";
    node.textContent = "Sorry, the help service can't be reached right now. Please try again in a moment." +
      (detail ? " (" + detail + ")" : "");
  }

  async function ask(question) {
    say("rag-user", question);
    var node = say("rag-bot", "\u2026");
    var body = { question: question, stream: true, history: history.slice(-20) };
    if (collection) body.collection = collection;
    var response;
    var headers = { "Content-Type": "application/json", Accept: "text/event-stream" };
    if (apiKey) headers.Authorization = "Bearer " + apiKey;
    try {
      response = await fetch(endpoint + "/v1/query", {
        method: "POST",
        headers: headers,
        body: JSON.stringify(body),
      });
    } catch (err) {
      unreachable(node);
      return;
    }
    if (!response.ok) {
      var message = "HTTP " + response.status;
      try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
      if (response.status >= 500) unreachable(node, message);
      else { node.className = "rag-msg rag-error"; node.textContent = message; }
      return;
    }
    var reader = response.body.getReader();
    var decoder = new TextDecoder();
    var buffer = "";
    var text = "";
    var finished = false;
    while (!finished) {
      var chunk;
      try { chunk = await reader.read(); } catch (err) { unreachable(node); return; }
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
        var payload;
        try { payload = JSON.parse(dataLines.join("\n")); }
        catch (err) { unreachable(node, "a garbled reply"); finished = true; return; }
        if (event === "token") {
          text += payload.text;
          node.textContent = text;
        } else if (event === "done") {
          node.textContent = payload.answer;  // authoritative
          showCitations(node, payload.citations);
          if (payload.answer_id) showRating(node, payload.answer_id, payload.needs_human);
          history.push({ role: "user", content: question }, { role: "assistant", content: payload.answer });
          finished = true;
        } else if (event === "error") {
          if (payload.error && payload.error.type === "service_unavailable") unreachable(node, payload.error.message);
          else { node.className = "rag-msg rag-error"; node.textContent = payload.error.message; }
          finished = true;
        }
      });
      log.scrollTop = log.scrollHeight;
    }
    if (!finished) unreachable(node, "the answer was cut off");
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var question = input.value.trim();
    if (!question) return;
    input.value = "";
    send.disabled = true;
    ask(question).finally(function () { send.disabled = false; input.focus(); });
  });

  function mount() { document.body.appendChild(root); }
  if (document.body) mount(); else document.addEventListener("DOMContentLoaded", mount);
})();
