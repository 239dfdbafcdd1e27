/*
 * The admin page: one report (GET /v1/admin/report) drawn as tiles, SVG charts and tables,
 * and the curated answers (GET /v1/curated) with pin, edit, remove and approve. Plain DOM,
 * no dependencies, no build step. The admin key (when the service has keys) stays in this
 * tab's sessionStorage.
 */
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  $("key").value = sessionStorage.getItem("rag-admin-key") || "";

  function el(tag, text, attrs) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = text;
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    return node;
  }

  async function api(method, path, body) {
    var headers = { "Content-Type": "application/json" };
    var key = $("key").value.trim();
    if (key) headers.Authorization = "Bearer " + key;
    var response = await fetch(path, { method: method, headers: headers, body: body ? JSON.stringify(body) : undefined });
    var data = await response.json().catch(function () { return {}; });
    if (!response.ok) throw new Error((data.error && data.error.message) || "HTTP " + response.status);
    return data;
  }

  function percent(x) { return x === null || x === undefined ? "-" : (100 * x).toFixed(1) + "%"; }

  function chart(target, days, series, format) {
    var w = 520, h = 180, pad = 34;
    var max = Math.max.apply(null, [1e-9].concat(series.flatMap(function (s) { return days.map(function (d) { return d[s.key]; }); })));
    var x = function (i) { return pad + (days.length < 2 ? 0 : i * (w - 2 * pad) / (days.length - 1)); };
    var y = function (v) { return h - pad + 10 - v / max * (h - pad - 10); };
    var svg = '<svg viewBox="0 0 ' + w + " " + h + '" width="100%" role="img">';
    svg += '<line x1="' + pad + '" y1="' + y(0) + '" x2="' + (w - pad) + '" y2="' + y(0) + '" stroke="#ccc"/>';
    svg += '<text x="2" y="' + (y(max) + 4) + '">' + format(max) + '</text><text x="2" y="' + y(0) + '">' + format(0) + "</text>";
    series.forEach(function (s, n) {
      var points = days.map(function (d, i) { return x(i) + "," + y(d[s.key]); }).join(" ");
      svg += '<polyline fill="none" stroke="' + s.color + '" stroke-width="2" points="' + points + '"/>';
      days.forEach(function (d, i) { svg += '<circle r="2.5" fill="' + s.color + '" cx="' + x(i) + '" cy="' + y(d[s.key]) + '"/>'; });
      svg += '<text x="' + (pad + n * 130) + '" y="12" style="fill:' + s.color + '">' + s.label + "</text>";
    });
    if (days.length) {
      svg += '<text x="' + pad + '" y="' + (h - 4) + '">' + days[0].day + "</text>";
      if (days.length > 1) svg += '<text x="' + (w - pad - 60) + '" y="' + (h - 4) + '">' + days[days.length - 1].day + "</text>";
    }
    target.innerHTML = svg + "</svg>";
  }

  // documentIds: what the pinned answer cites (a voted-down answer's documents), so that it goes
  // to review when they change; none for an unanswered question.
  function pinForm(question, onPinned, documentIds) {
    var form = el("form", null, { class: "pin" });
    var input = el("input", null, { placeholder: "The approved answer", "aria-label": "Answer to pin for: " + question });
    form.appendChild(input);
    form.appendChild(el("button", "Pin"));
    form.addEventListener("submit", async function (event) {
      event.preventDefault();
      if (!input.value.trim()) return;
      try {
        await api("POST", "/v1/curated", { collection: $("collection").value, question: question, answer: input.value.trim(),
                                           document_ids: documentIds || [] });
        onPinned();
      } catch (err) { $("error").textContent = err.message; }
    });
    return form;
  }

  function rows(table, header, items, render) {
    table.innerHTML = "";
    var head = el("tr");
    header.forEach(function (h) { head.appendChild(el("th", h)); });
    table.appendChild(head);
    if (!items.length) { var empty = el("tr"); empty.appendChild(el("td", "None.", { colspan: header.length, class: "muted" })); table.appendChild(empty); }
    items.forEach(function (item) { table.appendChild(render(item)); });
  }

  function cites(citations) {
    var box = el("div", null, { class: "cites" });
    (citations || []).forEach(function (c) { box.appendChild(el("a", c.title || c.document_id, { title: c.text || "" })); });
    return box;
  }

  function drawReport(report) {
    var tiles = $("tiles");
    tiles.innerHTML = "";
    [["Answers", report.answers], ["Resolved", percent(report.resolution_rate)], ["Abstained", percent(report.abstention_rate)],
     ["Cache hits", percent(report.cache_hit_rate)], ["Since", report.since]].forEach(function (t) {
      var tile = el("div", null, { class: "tile" });
      tile.appendChild(el("b", String(t[1])));
      tile.appendChild(el("span", t[0]));
      tiles.appendChild(tile);
    });
    chart($("rates"), report.days, [
      { key: "resolution_rate", label: "resolved", color: "#1a7f37" },
      { key: "abstention_rate", label: "abstained", color: "#b35900" },
      { key: "cache_hit_rate", label: "cache hits", color: "#2f5bea" }], percent);
    chart($("latency"), report.days, [
      { key: "p50_ms", label: "p50", color: "#2f5bea" }, { key: "p95_ms", label: "p95", color: "#8a1c1c" }],
      function (v) { return v.toFixed(0) + " ms"; });
    rows($("unanswered"), ["Question", "Times", "Asked as"], report.unanswered, function (g) {
      var tr = el("tr");
      var first = el("td", g.question);
      first.appendChild(pinForm(g.question, load));
      tr.appendChild(first);
      tr.appendChild(el("td", String(g.count)));
      tr.appendChild(el("td", g.examples.join(" | "), { class: "muted" }));
      return tr;
    });
    rows($("down"), ["Question", "Answer", "Reason / correction"], report.voted_down, function (d) {
      var tr = el("tr", null, { class: "voted-down" });
      var q = el("td", d.question);
      var documents = (d.citations || []).map(function (c) { return c.document_id; });
      q.appendChild(pinForm(d.question, load, documents.filter(function (id, i) { return documents.indexOf(id) === i; })));
      tr.appendChild(q);
      var a = el("td", d.answer);
      a.appendChild(cites(d.citations));
      tr.appendChild(a);
      tr.appendChild(el("td", [d.reason, d.correction].filter(Boolean).join(" / "), { class: "muted" }));
      return tr;
    });
  }

  function drawCurated(items) {
    rows($("curated"), ["Question", "Answer", "Status", ""], items, function (c) {
      var tr = el("tr", null, { class: "curated" });
      tr.appendChild(el("td", c.question));
      tr.appendChild(el("td", c.answer));
      tr.appendChild(el("td", c.status + " (v" + c.version + ")" + (c.review_reason ? ": " + c.review_reason : "")));
      var actions = el("td");
      var act = function (label, method, path, body) {
        var b = el("button", label);
        b.addEventListener("click", async function () {
          var payload = body ? body() : undefined;
          if (body && !payload) return;
          try { await api(method, path, payload); load(); } catch (err) { $("error").textContent = err.message; }
        });
        actions.appendChild(b);
      };
      act("Edit", "PATCH", "/v1/curated/" + c.id, function () {
        var answer = window.prompt("New answer", c.answer);
        return answer ? { answer: answer } : null;
      });
      act("Remove", "DELETE", "/v1/curated/" + c.id);
      if (c.status === "needs_review") act("Approve", "POST", "/v1/curated/" + c.id + "/approve");
      tr.appendChild(actions);
      return tr;
    });
  }

  async function collections() {
    var models = await api("GET", "/v1/models");
    var select = $("collection");
    var chosen = select.value;
    select.innerHTML = "";
    models.data.forEach(function (m) { select.appendChild(el("option", m.id)); });
    if (chosen) select.value = chosen;
  }

  async function load() {
    $("error").textContent = "";
    sessionStorage.setItem("rag-admin-key", $("key").value.trim());
    try {
      if (!$("collection").options.length) await collections();
      var collection = encodeURIComponent($("collection").value);
      var results = await Promise.all([
        api("GET", "/v1/admin/report?collection=" + collection + "&days=" + $("days").value),
        api("GET", "/v1/curated?collection=" + collection),
      ]);
      drawReport(results[0]);
      drawCurated(results[1].data.filter(function (c) { return c.status !== "removed"; }));
      document.body.dataset.loaded = String(Date.now());
    } catch (err) {
      $("error").textContent = err.message + (/key|401|403/i.test(err.message) ? " - enter an admin API key above" : "");
    }
  }

  $("load").addEventListener("click", load);
  $("collection").addEventListener("change", load);
  $("days").addEventListener("change", load);
  load();
})();
