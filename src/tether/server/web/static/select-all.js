// The host ticks on the Active Response page, and "Select all shown hosts". A file of its own
// because the Content-Security-Policy allows no inline script.
//
// The table's rows are replaced by the 2-second poll. The poll sends the ticked hosts so the
// server renders them ticked, but a poll already in flight when the analyst ticks a box answers
// with the rows as they were: the tick would vanish under the analyst's hand (seen under load).
// So the page keeps the selection itself and puts it back on every swap of the rows.
"use strict";

(() => {
  const selected = new Set();

  const hostBoxes = (form) => form.querySelectorAll('input[type="checkbox"][name="host"]');

  // The header box says "all shown are ticked", recomputed whenever the rows or ticks change.
  const syncHeader = (form) => {
    const all = form.querySelector("input#select-all");
    if (!all) {
      return;
    }
    const boxes = [...hostBoxes(form)];
    all.checked = boxes.length > 0 && boxes.every((box) => box.checked);
  };

  document.addEventListener("DOMContentLoaded", () => {
    const all = document.querySelector("input#select-all");
    if (!all || !all.form) {
      return;
    }
    for (const box of hostBoxes(all.form)) {
      if (box.checked) {
        selected.add(box.value);
      }
    }
    syncHeader(all.form);
  });

  document.addEventListener("change", (event) => {
    const target = event.target;
    if (!(target instanceof HTMLInputElement) || !target.form) {
      return;
    }
    if (target.id === "select-all") {
      for (const box of hostBoxes(target.form)) {
        box.checked = target.checked;
        if (target.checked) {
          selected.add(box.value);
        } else {
          selected.delete(box.value);
        }
      }
      return;
    }
    if (target.name === "host" && target.type === "checkbox") {
      if (target.checked) {
        selected.add(target.value);
      } else {
        selected.delete(target.value);
      }
      syncHeader(target.form);
    }
  });

  document.addEventListener("htmx:afterSwap", (event) => {
    const rows = event.target;
    if (!(rows instanceof HTMLElement) || rows.id !== "host-rows") {
      return;
    }
    const form = rows.closest("form");
    if (!form) {
      return;
    }
    for (const box of hostBoxes(form)) {
      box.checked = selected.has(box.value);
    }
    syncHeader(form);
  });
})();
