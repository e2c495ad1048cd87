/* Renders every plotly figure on the page from its json_script data (no inline script). */
(function () {
  function render(root) {
    root.querySelectorAll("[data-figure]").forEach(function (div) {
      var data = document.getElementById(div.dataset.figure);
      if (!data || div.dataset.rendered) return;
      var fig = JSON.parse(data.textContent);
      div.dataset.rendered = "1";
      window.Plotly.newPlot(div, fig.data, fig.layout, { displayModeBar: false, responsive: true });
    });
  }
  document.addEventListener("DOMContentLoaded", function () { render(document); });
  document.addEventListener("htmx:afterSwap", function (e) { render(e.target); });
})();
