(function () {
  "use strict";
  // Refresh the statistics every 10 s from the JSON API (relative, so the
  // page also works behind a proxy under a path), and add copy buttons.
  var units = "KMGTPE";
  var format = {
    count: function (n) { return Math.round(n).toLocaleString("en-US"); },
    bytes: function (n) {
      if (n < 1024) { return n + " B"; }
      var i = -1;
      do { n /= 1024; i++; } while (n >= 1024 && i < units.length - 1);
      return n.toFixed(1) + " " + units.charAt(i) + "iB";
    }
  };
  var updated = document.getElementById("stats-updated");
  function refresh() {
    if (document.hidden) { return; }
    fetch("api/v1/stats", { cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.json();
      })
      .then(function (s) {
        document.querySelectorAll("[data-stat]").forEach(function (el) {
          var k = el.getAttribute("data-stat");
          if (k === "hit_rate") {
            var h = Number(s.narinfo_hits), m = Number(s.narinfo_misses);
            el.textContent = h + m === 0 ? "\u2013" : (100 * h / (h + m)).toFixed(1) + "%";
            return;
          }
          if (!(k in s)) { return; }
          var kind = el.getAttribute("data-format") === "bytes" ? "bytes" : "count";
          el.textContent = format[kind](Number(s[k]));
          if (kind === "bytes") { el.title = s[k] + " bytes"; }
        });
        updated.textContent = "Live \u00b7 updated " + new Date().toLocaleTimeString();
      })
      .catch(function (e) { updated.textContent = "Live refresh paused (" + e.message + ")"; });
  }
  if (updated && window.fetch && document.querySelector("[data-stat]")) {
    setInterval(refresh, 10000);
  }
  if (navigator.clipboard) {
    document.querySelectorAll("pre[data-copy]").forEach(function (pre) {
      var code = pre.querySelector("code");
      var b = document.createElement("button");
      b.type = "button";
      b.className = "copy";
      b.textContent = "Copy";
      b.addEventListener("click", function () {
        navigator.clipboard.writeText(code.textContent).then(function () {
          b.textContent = "Copied";
          setTimeout(function () { b.textContent = "Copy"; }, 1500);
        });
      });
      pre.appendChild(b);
    });
  }
})();
