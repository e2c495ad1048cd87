// Keyboard triage on the workbench: j/k move between causes, x selects one, e opens it,
// a moves to the action bar's assignee, / jumps to search, ? shows these keys. No inline
// script (the CSP forbids it): this file is loaded with the page.
(function () {
  function rows() { return Array.prototype.slice.call(document.querySelectorAll("tr.group")); }
  var current = -1;
  function focus(i) {
    var list = rows();
    if (!list.length) return;
    current = Math.max(0, Math.min(i, list.length - 1));
    list.forEach(function (r) { r.classList.remove("kb-focus"); });
    list[current].classList.add("kb-focus");
    list[current].focus();
    list[current].scrollIntoView({ block: "nearest" });
  }
  function typing(target) {
    return target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.tagName === "SELECT");
  }
  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey || typing(e.target)) return;
    var help = document.getElementById("kb-help");
    var list = rows();
    if (e.key === "j") { focus(current + 1); e.preventDefault(); }
    else if (e.key === "k") { focus(current - 1); e.preventDefault(); }
    else if (e.key === "x" && list[current]) {
      var box = list[current].querySelector("input[type=checkbox]");
      if (box) box.checked = !box.checked;
      e.preventDefault();
    } else if (e.key === "e" && list[current]) { window.location = list[current].dataset.cause; }
    else if (e.key === "a") {
      var kind = document.querySelector("#bulk-bar select[name=kind]");
      if (kind) { kind.value = "assign"; document.querySelector("#bulk-bar select[name=assignee]").focus(); e.preventDefault(); }
    } else if (e.key === "/") {
      var q = document.querySelector("input[name=q]");
      if (q) { q.focus(); e.preventDefault(); }
    } else if (e.key === "?" && help) { help.hidden = !help.hidden; e.preventDefault(); }
    else if (e.key === "Escape" && help) { help.hidden = true; }
  });
})();
