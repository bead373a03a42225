// Pylon dashboard: live telemetry.
//
// On the device page it draws one uPlot chart per numeric reading: history
// from readings.json (data-readings-url), then live points from the page's
// event stream (data-events-url, Server-Sent Events), and it keeps the
// latest values, the refused messages, the connection and lifecycle state
// current. On the fleet page it refreshes the device counts and the message
// rates every 5 seconds. Everything a device chose
// (names, string values, reasons) is set as text, never as HTML.
"use strict";

(function () {
  var MAX_POINTS = 50000;   // points kept per chart: a 20,000-point history and live ones
  var MAX_ERROR_ROWS = 50;  // refused messages kept in the table
  var SPANS = { "15m": 900, "1h": 3600, "6h": 21600, "24h": 86400, "7d": 604800 };
  var COLORS = ["#2f5bea", "#12a150", "#d03b3b", "#b7791f", "#7a3fd0", "#0f8fa3", "#c2418a", "#556070"];

  var root = document.getElementById("telemetry");
  if (root) {
    devicePage(root);
  }
  var rates = document.getElementById("fleet-rates");
  if (rates) {
    fleetRates(rates);
  }

  // relTime says how long ago Unix second t was, like the server's pages.
  function relTime(t) {
    var d = Date.now() / 1000 - t;
    var future = d < 0;
    if (future) { d = -d; }
    var s;
    if (d < 10) { return "just now"; }
    if (d < 60) { s = Math.floor(d) + " s"; }
    else if (d < 3600) { s = Math.floor(d / 60) + " min"; }
    else if (d < 172800) { s = Math.floor(d / 3600) + " h"; }
    else { s = Math.floor(d / 86400) + " days"; }
    return future ? "in " + s : s + " ago";
  }

  // timeEl returns a <time> element for Unix second t.
  function timeEl(t, title) {
    var el = document.createElement("time");
    el.dateTime = new Date(t * 1000).toISOString();
    el.title = title || "";
    el.textContent = relTime(t);
    return el;
  }

  function parse(data) {
    try {
      return JSON.parse(data);
    } catch (e) {
      return null;
    }
  }

  // lowerBound returns the first index of sorted xs whose value is >= x.
  function lowerBound(xs, x) {
    var lo = 0, hi = xs.length;
    while (lo < hi) {
      var mid = (lo + hi) >>> 1;
      if (xs[mid] < x) { lo = mid + 1; } else { hi = mid; }
    }
    return lo;
  }

  function devicePage(root) {
    var readingsURL = root.dataset.readingsUrl;
    var eventsURL = root.dataset.eventsUrl;
    var range = root.dataset.range || "1h";
    var maxCharts = Number(root.dataset.maxCharts) || 8;
    var chartsEl = document.getElementById("charts");
    var chartsEmpty = document.getElementById("charts-empty");
    var picker = document.getElementById("chart-picker");
    var latest = document.getElementById("latest-values");
    var latestEmpty = document.getElementById("latest-empty");
    var errors = document.getElementById("device-errors");
    var errorsEmpty = document.getElementById("errors-empty");
    var status = document.getElementById("live-status");
    var canPlot = typeof uPlot !== "undefined";
    var charts = [];
    var generation = 0;  // bumps when the range changes; older answers are dropped
    var skew = 0;        // server clock minus browser clock, in seconds
    var frame = 0;

    function now() { return Date.now() / 1000 + skew; }
    function span() { return SPANS[range] || 3600; }

    Array.prototype.forEach.call(chartsEl.querySelectorAll(".tchart"), function (el) {
      charts.push({ name: el.dataset.name, el: el, plotEl: el.querySelector(".plot"), xs: [], ys: [], plot: null, loaded: false, early: [] });
    });
    charts.forEach(load);

    function findChart(name) {
      for (var i = 0; i < charts.length; i++) {
        if (charts[i].name === name) { return charts[i]; }
      }
      return null;
    }

    // addChart adds a chart for a reading name first seen live.
    function addChart(name, unitText) {
      var fig = document.createElement("figure");
      fig.className = "tchart";
      fig.dataset.name = name;
      var cap = document.createElement("figcaption");
      var n = document.createElement("span");
      n.className = "mono";
      n.textContent = name;
      cap.appendChild(n);
      if (unitText) {
        var u = document.createElement("span");
        u.className = "muted";
        u.textContent = " " + unitText;
        cap.appendChild(u);
      }
      var plotEl = document.createElement("div");
      plotEl.className = "plot";
      fig.appendChild(cap);
      fig.appendChild(plotEl);
      chartsEl.appendChild(fig);
      if (chartsEmpty) { chartsEmpty.hidden = true; }
      var c = { name: name, el: fig, plotEl: plotEl, xs: [], ys: [], plot: null, loaded: false, early: [] };
      charts.push(c);
      load(c);
      return c;
    }

    // load fetches the chart's history for the current range.
    function load(c) {
      var gen = generation;
      var started = performance.now();
      c.loaded = false;
      c.el.removeAttribute("data-error");
      var url = readingsURL + "?name=" + encodeURIComponent(c.name) + "&range=" + encodeURIComponent(range);
      fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (resp) {
          return resp.json().then(function (body) {
            if (!resp.ok) { throw new Error(body && body.error ? body.error : "HTTP " + resp.status); }
            return body;
          });
        })
        .then(function (s) {
          if (gen !== generation) { return; }
          c.el.dataset.fetchMs = String(Math.round(performance.now() - started));
          skew = s.to - Date.now() / 1000;
          c.xs = s.t;
          c.ys = s.v;
          c.loaded = true;
          c.early.forEach(function (p) { insert(c, p[0], p[1]); });
          c.early = [];
          c.el.dataset.mode = s.mode;
          note(c, s.mode === "avg" ? "averages per " + duration(s.bucket) : "");
          draw(c);
          c.el.dataset.points = String(c.xs.length);
          c.el.dataset.renderMs = String(Math.round(performance.now() - started));
          if (!root.dataset.firstRenderMs) {
            root.dataset.firstRenderMs = String(Math.round(performance.now()));
          }
        })
        .catch(function (err) {
          if (gen !== generation) { return; }
          c.el.dataset.error = String(err && err.message || err);
          c.plotEl.textContent = "Could not load the history: " + c.el.dataset.error;
        });
    }

    // note says in the chart's caption how its history was drawn.
    function note(c, text) {
      var cap = c.el.querySelector("figcaption");
      if (!cap) { return; }
      var el = cap.querySelector(".note");
      if (!el) {
        el = document.createElement("span");
        el.className = "note muted";
        cap.appendChild(el);
      }
      el.textContent = text ? " · " + text : "";
    }

    function duration(sec) {
      if (sec % 3600 === 0) { return sec / 3600 + " h"; }
      if (sec % 60 === 0) { return sec / 60 + " min"; }
      return sec + " s";
    }

    // insert adds a point in time order; a point already there (from the
    // history and the stream both) is not added twice.
    function insert(c, x, y) {
      var xs = c.xs, ys = c.ys, n = xs.length;
      if (n === 0 || x > xs[n - 1]) {
        xs.push(x);
        ys.push(y);
      } else {
        var i = lowerBound(xs, x);
        for (var j = i; j < n && xs[j] === x; j++) {
          if (ys[j] === y) { return; }
        }
        xs.splice(i, 0, x);
        ys.splice(i, 0, y);
      }
      if (xs.length > MAX_POINTS * 1.1) { trim(c); }
    }

    // trim drops the points left of the window and caps the count, in
    // chunks, so that appending stays cheap.
    function trim(c) {
      var cut = lowerBound(c.xs, now() - span());
      cut = Math.max(cut, c.xs.length - MAX_POINTS);
      if (cut > 0) {
        c.xs.splice(0, cut);
        c.ys.splice(0, cut);
      }
    }

    // options returns the chart's uPlot options. Its hooks time each draw
    // of the canvas into data-draw-ms (the last) and data-draws (how many),
    // which the benchmarks read.
    function options(c, i) {
      var drawStart = 0;
      return {
        hooks: {
          drawClear: [function () { drawStart = performance.now(); }],
          draw: [function () {
            c.el.dataset.drawMs = (performance.now() - drawStart).toFixed(1);
            c.el.dataset.draws = String((Number(c.el.dataset.draws) || 0) + 1);
          }]
        },
        width: c.plotEl.clientWidth || 600,
        height: 200,
        legend: { show: true },
        cursor: { drag: { x: false, y: false } },
        scales: { x: { time: true, range: function () { var t = now(); return [t - span(), t]; } } },
        axes: [{}, { size: 64 }],
        series: [
          {},
          // uPlot shows the points only where they are sparse enough.
          { label: c.name, stroke: COLORS[i % COLORS.length], width: 1.5 }
        ]
      };
    }

    function draw(c) {
      if (!canPlot) { return; }
      if (c.xs.length > MAX_POINTS) { trim(c); }
      if (c.plot) {
        c.plot.setData([c.xs, c.ys]);
        return;
      }
      c.plotEl.textContent = "";
      c.plot = new uPlot(options(c, charts.indexOf(c)), [c.xs, c.ys], c.plotEl);
    }

    // redraw draws the charts with new points, at most once a frame.
    function redraw() {
      if (frame) { return; }
      frame = requestAnimationFrame(function () {
        frame = 0;
        charts.forEach(function (c) {
          if (c.dirty && c.loaded) {
            c.dirty = false;
            draw(c);
            c.el.dataset.points = String(c.xs.length);
          }
        });
      });
    }

    function onReadings(ev) {
      var newest = new Map();
      ev.readings.forEach(function (r) {
        var prev = newest.get(r.n);
        if (!prev || prev.t <= r.t) { newest.set(r.n, r); }
        if (typeof r.v !== "number") { return; }
        var c = findChart(r.n);
        if (!c && !picker && charts.length < maxCharts) {
          c = addChart(r.n, r.ut);
        }
        if (!c) { return; }
        if (!c.loaded) {
          c.early.push([r.t, r.v]);
          return;
        }
        insert(c, r.t, r.v);
        c.dirty = true;
      });
      redraw();
      newest.forEach(updateLatest);
    }

    // updateLatest shows r in the latest-values table, unless the table
    // has a newer value of its name.
    function updateLatest(r) {
      if (!latest) { return; }
      var body = latest.tBodies[0], row = null, before = null;
      for (var i = 0; i < body.rows.length; i++) {
        var name = body.rows[i].dataset.name;
        if (name === r.n) { row = body.rows[i]; break; }
        if (before === null && name > r.n) { before = body.rows[i]; }
      }
      if (row) {
        var shown = row.querySelector("time");
        if (shown && Date.parse(shown.dateTime) / 1000 > r.t) { return; }
      } else {
        row = document.createElement("tr");
        row.dataset.name = r.n;
        for (var k = 0; k < 3; k++) { row.appendChild(document.createElement("td")); }
        row.cells[0].className = "mono rname";
        row.cells[1].className = "val";
        row.cells[2].className = "nowrap";
        row.cells[0].textContent = r.n;
        body.insertBefore(row, before);
      }
      row.cells[1].textContent = r.text;
      row.cells[2].textContent = "";
      row.cells[2].appendChild(timeEl(r.t, r.time));
      row.classList.remove("fresh");
      void row.offsetWidth; // restart the highlight
      row.classList.add("fresh");
      latest.hidden = false;
      if (latestEmpty) { latestEmpty.hidden = true; }
    }

    function onRejected(ev) {
      if (!errors) { return; }
      var row = document.createElement("tr");
      var when = document.createElement("td");
      when.className = "nowrap";
      when.appendChild(timeEl(ev.t, ev.time));
      var code = document.createElement("td");
      code.className = "code";
      code.textContent = ev.code || "";
      var seq = document.createElement("td");
      seq.className = "seq num";
      seq.textContent = ev.seq || "";
      var reason = document.createElement("td");
      reason.className = "reason";
      reason.textContent = ev.reason;
      row.appendChild(when);
      row.appendChild(code);
      row.appendChild(seq);
      row.appendChild(reason);
      var body = errors.tBodies[0];
      body.insertBefore(row, body.firstChild);
      while (body.rows.length > MAX_ERROR_ROWS) { body.deleteRow(-1); }
      errors.hidden = false;
      if (errorsEmpty) { errorsEmpty.hidden = true; }
    }

    function onConnection(ev) {
      var el = document.getElementById("conn-state");
      if (!el || typeof ev.online !== "boolean") { return; }
      var on = ev.online;
      el.className = "conn " + (on ? "on" : "off");
      el.textContent = "";
      var dot = document.createElement("span");
      dot.className = "dot " + (on ? "on" : "off");
      dot.setAttribute("aria-hidden", "true");
      el.appendChild(dot);
      el.appendChild(document.createTextNode(on ? "online" : "offline"));
    }

    function onState(ev) {
      var el = document.getElementById("device-state");
      if (!el || !/^[a-z]{1,32}$/.test(ev.state || "")) { return; }
      el.textContent = ev.state;
      el.className = "state state-" + ev.state;
      // The buttons were made for the state the page was rendered in.
      var changed = ev.state !== el.dataset.rendered;
      var actions = document.getElementById("device-actions");
      if (actions) { actions.hidden = changed; }
      var note = document.getElementById("state-changed");
      if (note) { note.hidden = !changed; }
    }

    function setStatus(text, cls) {
      if (!status) { return; }
      status.textContent = text;
      status.className = "live-status " + cls;
    }

    // The live stream. EventSource reconnects by itself after a network
    // error; after a refusal (such as too many open tabs) it gives up, and
    // so we try again later, backing off.
    var source = null, backoff = 5000;
    function connect() {
      setStatus("connecting…", "");
      source = new EventSource(eventsURL);
      source.onopen = function () {
        backoff = 5000;
        setStatus("live", "on");
      };
      source.onerror = function () {
        if (source.readyState === EventSource.CLOSED) {
          setStatus("offline", "off");
          setTimeout(connect, backoff);
          backoff = Math.min(backoff * 2, 60000);
        } else {
          setStatus("reconnecting…", "off");
        }
      };
      var handlers = { readings: onReadings, rejected: onRejected, connection: onConnection, state: onState };
      Object.keys(handlers).forEach(function (type) {
        source.addEventListener(type, function (e) {
          var ev = parse(e.data);
          if (ev) { handlers[type](ev); }
        });
      });
    }
    if (eventsURL && typeof EventSource !== "undefined") {
      connect();
      window.addEventListener("pagehide", function () { if (source) { source.close(); } });
    }

    // The time-range picker reloads the histories in place.
    var rangePicker = document.getElementById("range-picker");
    if (rangePicker) {
      rangePicker.addEventListener("click", function (e) {
        var a = e.target.closest("a[data-range]");
        if (!a || !SPANS[a.dataset.range] || e.ctrlKey || e.metaKey || e.shiftKey) { return; }
        e.preventDefault();
        range = a.dataset.range;
        root.dataset.range = range;
        generation++;
        Array.prototype.forEach.call(rangePicker.querySelectorAll("a"), function (other) {
          other.classList.toggle("active", other === a);
          if (other === a) { other.setAttribute("aria-current", "true"); } else { other.removeAttribute("aria-current"); }
        });
        if (picker && picker.elements.range) { picker.elements.range.value = range; }
        history.replaceState(null, "", a.href);
        charts.forEach(function (c) { c.early = []; load(c); });
      });
    }

    // Keep the windows sliding and the relative times current.
    setInterval(function () {
      if (document.hidden) { return; }
      charts.forEach(function (c) { if (c.loaded) { c.dirty = true; } });
      redraw();
      document.querySelectorAll("#latest-values time, #device-errors time").forEach(function (t) {
        var at = Date.parse(t.dateTime);
        if (!isNaN(at)) { t.textContent = relTime(at / 1000); }
      });
    }, 15000);

    window.addEventListener("resize", function () {
      charts.forEach(function (c) {
        if (c.plot) { c.plot.setSize({ width: c.plotEl.clientWidth, height: 200 }); }
      });
    });
  }

  // fleetRates refreshes the device counts and rate cards of the fleet
  // page.
  function fleetRates(el) {
    var url = el.dataset.statsUrl;
    function set(id, text) {
      var v = document.querySelector("#" + id + " .value");
      if (v) { v.textContent = text; }
    }
    setInterval(function () {
      if (document.hidden) { return; }
      fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (resp) { return resp.ok ? resp.json() : null; })
        .then(function (s) {
          if (!s) { return; }
          set("stat-total", String(s.devices));
          set("stat-online", String(s.online));
          set("stat-offline", String(s.offline));
          set("stat-msg-rate", s.messages_text);
          set("stat-rej-rate", s.rejected_text);
          var w = document.querySelector("#stat-msg-rate .window");
          if (w) { w.textContent = String(s.window_seconds); }
          var rej = document.getElementById("stat-rej-rate");
          if (rej) { rej.classList.toggle("bad-card", s.rejected_per_second > 0); }
        })
        .catch(function () {});
    }, 5000);
  }
})();
