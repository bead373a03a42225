// Pylon dashboard charts, drawn with uPlot (static/vendor, see
// build-assets.sh). Data comes from data-* attributes, never inline script.
"use strict";

(function () {
  if (typeof uPlot === "undefined") {
    return;
  }
  function numbers(s) {
    return (s || "").split(",").filter(function (v) { return v !== ""; }).map(Number);
  }

  // Connection timeline: online (1) or offline (0) over time, as steps.
  var el = document.getElementById("conn-chart");
  if (el) {
    var xs = numbers(el.dataset.x), ys = numbers(el.dataset.y);
    if (xs.length > 0 && xs.length === ys.length) {
      // Show at least the last hour: before its first event the device was
      // in the other state.
      var start = xs[xs.length - 1] - 3600;
      if (xs[0] > start) {
        xs.unshift(start);
        ys.unshift(ys[0] === 1 ? 0 : 1);
      }
      var opts = {
        width: el.clientWidth || 600,
        height: 150,
        legend: { show: false },
        cursor: { drag: { x: false, y: false } },
        scales: { y: { range: [-0.1, 1.1] } },
        axes: [
          {},
          { values: function (u, vals) { return vals.map(function (v) { return v === 1 ? "online" : v === 0 ? "offline" : ""; }); },
            splits: function () { return [0, 1]; }, size: 60 }
        ],
        series: [
          {},
          { label: "online", stroke: "#12a150", fill: "rgba(18,161,80,0.12)", width: 2,
            paths: uPlot.paths.stepped({ align: 1 }), points: { show: false } }
        ]
      };
      var plot = new uPlot(opts, [xs, ys], el);
      window.addEventListener("resize", function () {
        plot.setSize({ width: el.clientWidth, height: 150 });
      });
    }
  }
})();
