// Refreshes the live page from live.json every 2 s (DOM built from text, never HTML).
(function () {
  "use strict";
  var script = document.currentScript;
  var src = script.dataset.src;
  var callUrl = script.dataset.call;

  function row(cells, cls) {
    var tr = document.createElement("tr");
    if (cls) tr.className = cls;
    cells.forEach(function (value) {
      var td = document.createElement("td");
      if (value instanceof Node) td.appendChild(value); else td.textContent = value;
      tr.appendChild(td);
    });
    return tr;
  }

  function fill(id, rows, empty, width) {
    var body = document.querySelector("#" + id + " tbody");
    body.replaceChildren();
    if (!rows.length && empty) {
      var tr = row([empty], "none");
      tr.firstChild.colSpan = width;
      body.appendChild(tr);
    }
    rows.forEach(function (tr) { body.appendChild(tr); });
  }

  // What the agent is doing: its text, and a class of the same name for its colour.
  function activity(value) {
    var span = document.createElement("span");
    if (value) {
      span.className = "activity " + value;
      span.textContent = value.replace("-", " ");
    }
    return span;
  }

  function render(state) {
    fill("live-calls", state.calls.map(function (c) {
      var link = document.createElement("a");
      link.href = callUrl.replace("KEY", encodeURIComponent(c.key));
      link.textContent = c.worker;
      return row([link, c.from, c.to, c.direction, activity(c.activity), c.duration_s + " s"],
                 "call");
    }), "No calls in progress.", 6);
    fill("workers", state.workers.map(function (w) {
      return row([w.index, w.kind, w.state, w.pid || "", w.calls + "/" + w.max_calls,
                  w.free, w.registration, w.restarts], "worker " + w.state);
    }), null, 8);
    document.getElementById("updated").textContent =
      "updated " + new Date().toLocaleTimeString();
  }

  function poll() {
    fetch(src, {credentials: "same-origin", cache: "no-store"})
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
      .then(render)
      .catch(function () { document.getElementById("updated").textContent = "(not updating)"; })
      .finally(function () { setTimeout(poll, 2000); });
  }
  setTimeout(poll, 2000);
})();
