// Visor dashboard: live updates over server-sent events (see ui/doc.go).
// Everything the server sends is inserted as text or as HTML the server
// rendered and escaped; nothing here builds HTML from data.
"use strict";
(function () {
  var main = document.getElementById("main");
  var status = document.getElementById("live-status");
  var minGap = 500; // ms between two re-reads of the page
  var pending = false, last = 0, timer = null;
  window.visorRefreshes = 0;

  function setStatus(t) { if (status) status.textContent = t; }

  // editing reports whether the user is typing in a form of the page: a
  // re-read then waits, so it never throws away what they typed.
  function editing() {
    var a = document.activeElement;
    return a && main.contains(a) && (a.tagName === "INPUT" || a.tagName === "SELECT" || a.tagName === "TEXTAREA");
  }

  function refresh() {
    timer = null;
    if (editing()) { timer = setTimeout(refresh, minGap); return; }
    pending = false;
    last = Date.now();
    fetch(location.href, { headers: { "X-Visor-Partial": "1" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) return;
        var doc = new DOMParser().parseFromString("<main>" + html + "</main>", "text/html");
        var fresh = doc.querySelector("main");
        // Keep live parts (a followed log) as they are.
        main.querySelectorAll("[data-keep]").forEach(function (old) {
          var n = fresh.querySelector("#" + old.id);
          if (n) n.replaceWith(old);
        });
        main.replaceChildren.apply(main, Array.prototype.slice.call(fresh.childNodes));
        window.visorRefreshes++;
      })
      .catch(function () { setStatus("live (update failed)"); });
  }

  function schedule() {
    pending = true;
    if (timer) return;
    timer = setTimeout(refresh, Math.max(0, minGap - (Date.now() - last)));
  }

  function eventText(ev) {
    var t = "#" + ev.revision + " " + ev.type;
    ["app", "rev", "proc", "instance", "host"].forEach(function (k) { if (ev[k]) t += " " + k + " " + ev[k]; });
    if (ev.state) t += " \u2192 " + ev.state;
    if (ev.deleted) t += " (deleted)";
    return t;
  }

  var list = document.querySelector("[data-live-events]");
  var staticPage = document.querySelector("form.confirm, #message, #token");
  if (!staticPage && window.EventSource) {
    var es = new EventSource("/ui/live");
    es.onopen = function () { setStatus("live"); };
    es.onerror = function () { setStatus("reconnecting…"); };
    es.addEventListener("change", function (m) {
      if (list) {
        var li = document.createElement("li");
        li.textContent = eventText(JSON.parse(m.data));
        list.insertBefore(li, list.firstChild);
        while (list.children.length > 500) list.removeChild(list.lastChild);
        return;
      }
      schedule();
    });
    es.addEventListener("resync", function () { if (!list) schedule(); });
  }

  var log = document.getElementById("log");
  if (log && window.EventSource) {
    log.setAttribute("data-keep", "");
    var logStatus = document.getElementById("log-status");
    logStatus.setAttribute("data-keep", "");
    var src = new EventSource(log.getAttribute("data-src"));
    src.onopen = function () { logStatus.textContent = "Following the log live."; };
    src.onerror = function () {
      logStatus.textContent = "The log is not available now (the instance may be gone); retrying…";
    };
    src.addEventListener("line", function (m) {
      var stick = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      log.appendChild(document.createTextNode(m.data + "\n"));
      while (log.childNodes.length > 5000) log.removeChild(log.firstChild);
      if (stick) log.scrollTop = log.scrollHeight;
    });
  }
})();
