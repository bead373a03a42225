// Pylon dashboard: the little JavaScript it has. Pages work without it.
"use strict";

// Copy buttons: <button data-copy="ID"> copies the text of element ID.
document.querySelectorAll("button[data-copy]").forEach(function (btn) {
  btn.addEventListener("click", function () {
    var el = document.getElementById(btn.dataset.copy);
    if (!el || !navigator.clipboard) {
      return;
    }
    navigator.clipboard.writeText(el.textContent).then(function () {
      var label = btn.textContent;
      btn.textContent = "Copied";
      setTimeout(function () { btn.textContent = label; }, 1500);
    }, function () {
      btn.textContent = "Copy failed";
    });
  });
});
