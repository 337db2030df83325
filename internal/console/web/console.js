// dpgate console: live figures, table filter and sort, select all,
// confirmations. No framework, no external fetches.
(function () {
  "use strict";
  // Figures update without a reload: every [data-live] element is fetched
  // again every 5 s, unless the user is typing or has selected something
  // inside it.
  function refresh() {
    document.querySelectorAll("[data-live]").forEach(function (el) {
      if (el.contains(document.activeElement) || el.querySelector("input:checked")) return;
      fetch(el.getAttribute("data-live"), { credentials: "same-origin", headers: { "X-Fragment": "1" } })
        .then(function (r) { if (r.status === 200) return r.text(); if (r.status === 401) location.reload(); })
        .then(function (html) { if (typeof html === "string") { el.innerHTML = html; applyFilters(); } })
        .catch(function () {});
    });
  }
  setInterval(refresh, 5000);

  // Filter: hide rows whose text does not contain the query.
  function applyFilter(input) {
    var q = input.value.trim().toLowerCase();
    document.querySelectorAll(input.getAttribute("data-filter")).forEach(function (tr) {
      if (tr.classList.contains("empty")) return;
      tr.hidden = q !== "" && tr.textContent.toLowerCase().indexOf(q) < 0;
    });
  }
  function applyFilters() { document.querySelectorAll("input[data-filter]").forEach(applyFilter); }
  document.querySelectorAll("input[data-filter]").forEach(function (input) {
    input.addEventListener("input", function () { applyFilter(input); });
  });

  // Sort: click a header to sort its column, again to reverse.
  document.addEventListener("click", function (e) {
    var th = e.target.closest("th[data-sort]");
    if (!th) return;
    var table = th.closest("table"), tbody = table.tBodies[0];
    var col = Array.prototype.indexOf.call(th.parentNode.children, th);
    var dir = th.getAttribute("data-dir") === "asc" ? -1 : 1;
    th.parentNode.querySelectorAll("th").forEach(function (h) { h.removeAttribute("data-dir"); });
    th.setAttribute("data-dir", dir === 1 ? "asc" : "desc");
    var rows = Array.prototype.slice.call(tbody.rows).filter(function (r) { return !r.classList.contains("empty"); });
    rows.sort(function (a, b) {
      var x = a.cells[col].textContent.trim(), y = b.cells[col].textContent.trim();
      var nx = parseFloat(x), ny = parseFloat(y);
      if (!isNaN(nx) && !isNaN(ny) && String(nx) === x && String(ny) === y) return (nx - ny) * dir;
      return x.localeCompare(y) * dir;
    });
    rows.forEach(function (r) { tbody.appendChild(r); });
  });

  // Select all visible rows.
  document.querySelectorAll("input[data-select-all]").forEach(function (box) {
    box.addEventListener("change", function () {
      document.querySelectorAll(box.getAttribute("data-select-all")).forEach(function (c) {
        if (!c.closest("tr").hidden) c.checked = box.checked;
      });
    });
  });

  // Confirm destructive forms.
  document.addEventListener("submit", function (e) {
    var msg = e.target.getAttribute("data-confirm");
    if (msg && !window.confirm(msg)) e.preventDefault();
  });
})();
