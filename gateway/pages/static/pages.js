// hexbook's one script: what a page adds with JavaScript on (it works without).
// - "Use my location" on the find page fills the form's point and searches.
// - The launch dashboard follows /dashboard/events (server-sent events) and updates
//   the numbers, the maps and the tables in place.
"use strict";
(function () {
  var locate = document.querySelector("[data-locate-button]");
  if (locate && navigator.geolocation) {
    locate.hidden = false;
    locate.addEventListener("click", function () {
      navigator.geolocation.getCurrentPosition(function (pos) {
        var form = locate.form;
        form.querySelector("[data-locate=lat]").value = pos.coords.latitude.toFixed(5);
        form.querySelector("[data-locate=lng]").value = pos.coords.longitude.toFixed(5);
        form.submit();
      });
    });
  }
  if (!document.querySelector("[data-stat]") || !window.EventSource) { return; }
  function get(obj, path) {
    return path.split(".").reduce(function (o, k) { return o == null ? o : o[k]; }, obj);
  }
  function cell(text) { var td = document.createElement("td"); td.textContent = text; return td; }
  function rows(name, items, cells) {
    var body = document.querySelector('[data-rows="' + name + '"]');
    if (!body) { return; }
    body.replaceChildren.apply(body, items.map(function (item) {
      var tr = document.createElement("tr");
      cells(item).forEach(function (text) { tr.appendChild(cell(text)); });
      if (item.provider_id) { tr.dataset.provider = item.provider_id; tr.dataset.service = item.service; }
      return tr;
    }));
  }
  var source = new EventSource("/dashboard/events");
  source.addEventListener("maps", function (e) {
    var maps = JSON.parse(e.data);
    document.querySelectorAll("[data-html]").forEach(function (el) {
      if (maps[el.dataset.html] != null) { el.innerHTML = maps[el.dataset.html]; }
    });
  });
  source.addEventListener("stats", function (e) {
    var s = JSON.parse(e.data);
    if (s.error) { return; }
    document.querySelectorAll("[data-stat]").forEach(function (el) {
      var v = el.dataset.stat === "at" ? new Date(s.at * 1000).toLocaleTimeString() : get(s, el.dataset.stat);
      if (v != null) { el.textContent = String(v); }
    });
    rows("sites", s.sites, function (x) { return [x.name, x.service, String(x.left)]; });
    rows("shards", s.shards, function (x) {
      return [x.name, x.up ? "up" : "down: " + x.why, x.calendars == null ? "" : String(x.calendars),
              x.ms == null ? "" : String(x.ms)];
    });
  });
})();
