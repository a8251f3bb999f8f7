"""The style and script `svctrace html` inlines into its page (plain strings: no build step,
no package data, nothing fetched)."""

STYLE = r"""
:root{--row:22px;--cell:34px;--ink:#1d2329;--muted:#66707a;--line:#d9dee3;--obs:#2e8b57;
--inh:#c98a00;--dec:#3b6fb6;--base:#9aa3ab;--hi:#eef5ff}
*{box-sizing:border-box}
body{margin:0;font:13px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--ink)}
header{padding:10px 16px 4px}
h1{font-size:18px;margin:0 0 2px}
h2{font-size:15px;margin:18px 0 6px}
#runline,.muted,.legend{color:var(--muted)}
nav{display:flex;flex-wrap:wrap;gap:12px;align-items:center;padding:6px 16px;
border-bottom:1px solid var(--line);position:sticky;top:0;background:#fff;z-index:2}
nav input[type=search]{min-width:260px;padding:3px 6px}
main{display:flex;gap:12px;padding:8px 16px}
#matrix-wrap{flex:3;min-width:0}
#detail{flex:2;min-width:320px;max-height:80vh;overflow:auto;border:1px solid var(--line);
padding:8px 10px;position:sticky;top:48px;align-self:flex-start}
#detail pre,#extra pre{white-space:pre-wrap;word-break:break-word;font:12px/1.45 ui-monospace,
SFMono-Regular,Menlo,Consolas,monospace;margin:6px 0}
#matrix{height:70vh;overflow:auto;position:relative;border:1px solid var(--line)}
#spacer{width:1px}
.grid{display:grid;align-items:center}
.row{position:absolute;left:0;right:0;height:var(--row);cursor:pointer;
border-bottom:1px solid #f1f3f5;white-space:nowrap}
.row:hover,.row.sel{background:var(--hi)}
.row.file{background:#f4f6f8;font-weight:600;cursor:default}
.row.cls{background:#fafbfc;font-style:italic;cursor:default}
.name{overflow:hidden;text-overflow:ellipsis;padding:0 6px}
.row.test .name{padding-left:26px}
.row.cls .name{padding-left:14px}
#matrix-head{font-weight:600;border:1px solid var(--line);border-bottom:0;background:#f4f6f8;
height:90px;align-items:end}
#matrix-head span{writing-mode:vertical-rl;transform:rotate(180deg);padding:4px 0;
overflow:hidden;max-height:88px;justify-self:center;white-space:nowrap;text-overflow:ellipsis}
#matrix-head span.name,#matrix-head span.hz{writing-mode:horizontal-tb;transform:none;
justify-self:start;padding:0 4px 4px}
.c{text-align:center;font:11px ui-monospace,monospace;border-radius:3px;margin:1px;
line-height:18px;overflow:hidden}
.c.o{background:var(--obs);color:#fff}
.c.i{background:var(--inh);color:#fff}
.c.d{background:var(--dec);color:#fff}
.c.b{background:var(--base);color:#fff}
.c.n{color:var(--muted)}
.out{padding:0 4px;overflow:hidden;text-overflow:ellipsis}
.out.failed,.out.error,.out.interrupted{color:#b3261e;font-weight:600}
.out.skipped,.out.xfailed,.out.notrun{color:var(--muted)}
.note{padding:0 4px;overflow:hidden;text-overflow:ellipsis;color:var(--muted)}
.note.chg{color:#8a3ffc}
#extra{padding:0 16px 24px}
table{border-collapse:collapse;margin:4px 0}
td,th{border:1px solid var(--line);padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f4f6f8}
code{font:12px ui-monospace,monospace}
"""

SCRIPT = r"""
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("svctrace-data").textContent);
  var $ = function (id) { return document.getElementById(id); };
  var ROW = 22, NS = D.services.length;
  var matrix = $("matrix"), spacer = $("spacer");
  // the notes column grows with the page: with --plan and --compare it says the tier, what
  // changed and what a test holds, and must not be cut at a fixed width
  var columns = "minmax(220px,2fr) repeat(" + NS + ",var(--cell)) 80px 56px " +
    (D.plan || D.compare ? "minmax(160px,1fr)" : "minmax(90px,160px)");

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function option(sel, value, text) { var o = el("option", null, text || value); o.value = value; sel.appendChild(o); }
  function nodeid(r) {
    var c = D.classes[r[2]];
    return D.files[r[1]] + (c ? "::" + c : "") + "::" + r[0];
  }
  var ids = D.rows.map(function (r) { return nodeid(r); });
  var lower = ids.map(function (s) { return s.toLowerCase(); });

  // controls
  D.services.forEach(function (s, i) { option($("f-service"), String(i), s); });
  var outcomes = {};
  D.rows.forEach(function (r) { outcomes[r[3]] = (outcomes[r[3]] || 0) + 1; });
  Object.keys(outcomes).sort().forEach(function (o) { option($("f-outcome"), o, o + " (" + outcomes[o] + ")"); });
  if (D.plan) { $("l-tier").hidden = false; D.plan.order.forEach(function (t) { option($("f-tier"), t); }); }
  if (D.compare) { $("l-changed").hidden = false; }
  var run = D.run;
  $("runline").textContent = "backend " + run.backend + " · " + run.tests_ran + " of " + run.tests +
    " tests ran · " + run.lost_events + " lost events" + (run.started_at ? " · " + run.started_at : "") +
    (run.command ? " · " + run.command : "");

  // header of the matrix
  var head = $("matrix-head");
  head.className = "grid";
  head.style.gridTemplateColumns = columns;
  head.appendChild(el("span", "name", "test (grouped by file and class)"));
  D.services.forEach(function (s) { var h = el("span", null, s); h.title = s; head.appendChild(h); });
  // words, not service names: written across (up the 90 px header they were cut off)
  ["outcome", "sec", D.plan ? "tier / notes" : "notes"].forEach(function (t) { head.appendChild(el("span", "hz", t)); });

  var entries = [];   // [kind, index, counts]: kind "f" file, "k" class, "t" test
  var selected = -1;

  function state() {
    return {service: $("f-service").value, outcome: $("f-outcome").value, tier: $("f-tier").value,
            changed: $("f-changed").checked, q: $("f-text").value.trim().toLowerCase()};
  }
  function keep(i, st) {
    var r = D.rows[i];
    if (st.service !== "") { var cell = r[5][st.service]; if (!cell || cell === "b") return false; }
    if (st.outcome && r[3] !== st.outcome) return false;
    if (st.tier && r[6] !== st.tier) return false;
    if (st.changed && !r[7]) return false;
    if (st.q) {
      var words = st.q.split(/\s+/);
      for (var w = 0; w < words.length; w++) if (lower[i].indexOf(words[w]) < 0) return false;
    }
    return true;
  }
  function apply() {
    var st = state();
    entries = [];
    var lastFile = -1, lastClass = -1, fileEntry = null, classEntry = null, shown = 0;
    for (var i = 0; i < D.rows.length; i++) {
      if (!keep(i, st)) continue;
      var r = D.rows[i];
      if (r[1] !== lastFile) {
        fileEntry = ["f", r[1], new Array(NS).fill(0), 0];
        entries.push(fileEntry); lastFile = r[1]; lastClass = -1;
      }
      if (r[2] !== lastClass) {
        classEntry = r[2] ? ["k", r[2], new Array(NS).fill(0), 0] : null;
        if (classEntry) entries.push(classEntry);
        lastClass = r[2];
      }
      for (var k in r[5]) {
        if (r[5][k] === "b") continue;
        fileEntry[2][k]++;
        if (classEntry) classEntry[2][k]++;
      }
      fileEntry[3]++; if (classEntry) classEntry[3]++;
      entries.push(["t", i]);
      shown++;
    }
    spacer.style.height = (entries.length * ROW) + "px";
    $("count").textContent = shown + " of " + D.rows.length + " tests";
    render(true);
    writeHash(st);
  }
  var drawn = {};
  function cellClass(v) {
    if (!v) return "c";
    if (/[sctg]/.test(v)) return "c o";
    if (v.indexOf("i") >= 0) return "c i";
    if (v.indexOf("d") >= 0) return "c d";
    return "c b";
  }
  function makeRow(n) {
    var e = entries[n], row = el("div", "row grid");
    row.style.gridTemplateColumns = columns;
    row.style.top = (n * ROW) + "px";
    if (e[0] === "t") {
      var r = D.rows[e[1]];
      row.className += " test" + (e[1] === selected ? " sel" : "");
      row.dataset.i = e[1];
      var name = el("span", "name", r[0]); name.title = ids[e[1]]; row.appendChild(name);
      for (var s = 0; s < NS; s++) {
        var v = r[5][s] || "";
        var c = el("span", cellClass(v), v); if (v) c.title = D.services[s] + ": " + v; row.appendChild(c);
      }
      row.appendChild(el("span", "out " + r[3].replace(" ", ""), r[3]));
      row.appendChild(el("span", "note", r[4] ? r[4].toFixed(2) : ""));
      var notes = [];
      if (r[6]) notes.push(r[6]);
      if (r[9]) notes.push("holds " + (D.plan ? D.plan.granularity : "group"));
      if (r[8]) notes.push("probe " + r[8]);
      var note = el("span", "note" + (r[7] ? " chg" : ""), (r[7] ? r[7] + " " : "") + notes.join(" · "));
      note.title = note.textContent; row.appendChild(note);
    } else {
      row.className += e[0] === "f" ? " file" : " cls";
      var label = e[0] === "f" ? D.files[e[1]] : D.classes[e[1]];
      var hn = el("span", "name", label + "  (" + e[3] + ")"); hn.title = label; row.appendChild(hn);
      for (var j = 0; j < NS; j++) row.appendChild(el("span", "c n", e[2][j] || ""));
      row.appendChild(el("span")); row.appendChild(el("span")); row.appendChild(el("span"));
    }
    return row;
  }
  function render(reset) {
    if (reset) { for (var k in drawn) drawn[k].remove(); drawn = {}; }
    var first = Math.max(0, Math.floor(matrix.scrollTop / ROW) - 10);
    var last = Math.min(entries.length, first + Math.ceil(matrix.clientHeight / ROW) + 20);
    for (var key in drawn) { if (key < first || key >= last) { drawn[key].remove(); delete drawn[key]; } }
    for (var n = first; n < last; n++) if (!drawn[n]) { drawn[n] = makeRow(n); matrix.appendChild(drawn[n]); }
  }
  var pending = false;
  matrix.addEventListener("scroll", function () {
    if (pending) return; pending = true;
    requestAnimationFrame(function () { pending = false; render(false); });
  });
  matrix.addEventListener("click", function (ev) {
    var row = ev.target.closest(".row.test"); if (!row) return;
    show(Number(row.dataset.i));
  });
  function show(i) {
    selected = i;
    var box = $("detail"); box.textContent = "";
    var r = D.rows[i];
    box.appendChild(el("h2", null, ids[i]));
    if (r[6]) box.appendChild(el("p", null, "tier: " + r[6]));
    if (r[9]) box.appendChild(el("p", null, "keeps " + r[9] + " out of a cheaper tier"));
    if (r[7]) box.appendChild(el("p", null, "changed since the old report: " + r[7]));
    var pre = el("pre", null, D.details[i]); pre.id = "explain"; box.appendChild(pre);
    for (var k in drawn) drawn[k].classList.toggle("sel", Number(drawn[k].dataset.i) === i && drawn[k].classList.contains("test"));
    writeHash(state());
  }

  // the filters live in the address (#service=kafka&outcome=failed&q=…): links can be shared
  function writeHash(st) {
    var parts = [];
    if (st.service !== "") parts.push("service=" + encodeURIComponent(D.services[st.service]));
    if (st.outcome) parts.push("outcome=" + encodeURIComponent(st.outcome));
    if (st.tier) parts.push("tier=" + encodeURIComponent(st.tier));
    if (st.changed) parts.push("changed=1");
    if (st.q) parts.push("q=" + encodeURIComponent(st.q));
    if (selected >= 0) parts.push("test=" + encodeURIComponent(ids[selected]));
    var hash = parts.length ? "#" + parts.join("&") : "";
    if (hash !== location.hash) history.replaceState(null, "", hash || location.pathname + location.search);
  }
  function readHash() {
    var params = {};
    location.hash.replace(/^#/, "").split("&").forEach(function (kv) {
      if (!kv) return; var p = kv.split("="); params[decodeURIComponent(p[0])] = decodeURIComponent(p[1] || "");
    });
    if (params.service !== undefined) { var s = D.services.indexOf(params.service); $("f-service").value = s >= 0 ? String(s) : ""; }
    if (params.outcome) $("f-outcome").value = params.outcome;
    if (params.tier && D.plan) $("f-tier").value = params.tier;
    if (params.changed && D.compare) $("f-changed").checked = true;
    if (params.q) $("f-text").value = params.q;
    return params.test;
  }

  ["f-service", "f-outcome", "f-tier", "f-changed"].forEach(function (id) { $(id).addEventListener("change", apply); });
  var typing = null;
  $("f-text").addEventListener("input", function () { clearTimeout(typing); typing = setTimeout(apply, 120); });
  window.addEventListener("resize", function () { render(false); });

  // the run-level sections
  function table(parent, headers, rows) {
    var t = el("table"), tr = el("tr");
    headers.forEach(function (h) { tr.appendChild(el("th", null, h)); }); t.appendChild(tr);
    rows.forEach(function (r) { var row = el("tr"); r.forEach(function (v) { row.appendChild(el("td", null, v)); }); t.appendChild(row); });
    parent.appendChild(t);
  }
  var extra = $("extra");
  if (D.compare) {
    extra.appendChild(el("h2", null, "Changes since the old report"));
    extra.appendChild(el("p", null, D.compare.changed + " tests changed (tick \"changed only\"), " +
      D.compare.gone.length + " tests are gone" + (D.compare.gone.length ? ":" : ".")));
    if (D.compare.gone.length) extra.appendChild(el("pre", null, D.compare.gone.join("\n")));
  }
  if (D.plan) {
    extra.appendChild(el("h2", null, "Tiers (" + D.plan.granularity + " granularity)"));
    table(extra, ["tier", "services", "tests"], D.plan.order.map(function (n) {
      var t = D.plan.tiers[n]; return [n + (n === D.plan.fallback ? " (fallback)" : ""), t.services.join(", ") || "(none)", t.tests];
    }));
    extra.appendChild(el("h2", null, "What keeps a " + D.plan.granularity + " out of a cheaper tier"));
    if (!D.plan.held.length) extra.appendChild(el("p", "muted", "Nothing: every group is in the tier its tests need."));
    else table(extra, [D.plan.granularity, "tier", "tests that could go cheaper", "held there by"],
      D.plan.held.map(function (g) {
        return [g.group, g.tier, g.cheaper + " of " + g.tests, g.holders.map(function (h) {
          return h.nodeid.split("::").slice(1).join("::") + " (" + (h.ran ? (h.needs.join(", ") || "no services") : "not run") + ")";
        }).join("; ")];
      }));
  }
  extra.appendChild(el("h2", null, "Traffic outside tests (unattributed)"));
  if (!D.unattributed.length) extra.appendChild(el("p", "muted", "None."));
  else table(extra, ["reason", "detail", "services", "destinations"], D.unattributed.map(function (u) {
    return [u.reason, u.detail, u.services.join(", "), u.destinations.join(", ")];
  }));
  extra.appendChild(el("h2", null, "Wider-scoped fixtures that contacted services"));
  if (!D.fixtures.length) extra.appendChild(el("p", "muted", "None."));
  else table(extra, ["fixture", "scope", "services", "ran in the windows of"], D.fixtures.map(function (f) {
    return [f.fixture, f.scope, f.services.join(", "), f.tests.join(", ")];
  }));
  extra.appendChild(el("h2", null, "Summary"));
  extra.appendChild(el("pre", null, D.summary));

  var wanted = readHash();
  apply();
  if (wanted) { var at = ids.indexOf(wanted); if (at >= 0) show(at); }
  document.body.dataset.ready = "1";
})();
"""
