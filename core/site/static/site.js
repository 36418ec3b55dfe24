// Sortable tables: a click on a column head of a table.sortable sorts its rows by that column,
// numerically when the cells carry a data-sort number, else as text; a second click reverses.
"use strict";

function sortTable(table, column, th) {
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  const ascending = th.getAttribute("aria-sort") !== "ascending";
  const key = (row) => {
    const cell = row.cells[column];
    const sort = cell ? cell.getAttribute("data-sort") : null;
    if (sort !== null && sort !== "") return { number: parseFloat(sort), text: cell.textContent };
    return { number: NaN, text: cell ? cell.textContent.trim() : "" };
  };
  const compare = (a, b) => {
    const ka = key(a), kb = key(b);
    const na = isNaN(ka.number), nb = isNaN(kb.number);
    if (!na && !nb) return ka.number - kb.number;
    if (na !== nb) return na ? 1 : -1; // numbers before blanks and words
    return ka.text.localeCompare(kb.text, undefined, { numeric: true });
  };
  rows.sort((a, b) => (ascending ? compare(a, b) : compare(b, a)));
  for (const other of table.tHead.rows[0].cells) other.removeAttribute("aria-sort");
  th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  body.append(...rows);
}

document.addEventListener("DOMContentLoaded", () => {
  for (const table of document.querySelectorAll("table.sortable")) {
    Array.from(table.tHead.rows[0].cells).forEach((th, column) => {
      th.addEventListener("click", () => sortTable(table, column, th));
    });
  }
});
