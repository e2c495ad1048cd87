/* Renders every plotly figure on the page from its json_script data (no inline script). A bar
   whose trace carries `customdata` (one address per bar) opens that address when clicked. */
(function () {
  function render(root) {
    root.querySelectorAll("[data-figure]").forEach(function (div) {
      var data = document.getElementById(div.dataset.figure);
      if (!data || div.dataset.rendered) return;
      var fig = JSON.parse(data.textContent);
      div.dataset.rendered = "1";
      window.Plotly.newPlot(div, fig.data, fig.layout, { displayModeBar: false, responsive: true }).then(function () {
        if (!fig.data.some(function (t) { return t.customdata; })) return;
        div.classList.add("clickable");
        div.on("plotly_click", function (event) {
          var point = event.points && event.points[0];
          var href = point && point.customdata;
          // Only our own pages: a figure never sends the reader elsewhere.
          if (typeof href === "string" && href.charAt(0) === "/" && href.charAt(1) !== "/") {
            window.location.assign(href);
          }
        });
      });
    });
  }
  document.addEventListener("DOMContentLoaded", function () { render(document); });
  document.addEventListener("htmx:afterSwap", function (e) { render(e.target); });
})();
