// "Select all shown hosts" on the Active Response page. A file of its own because the
// Content-Security-Policy allows no inline script. The table's rows are replaced by the
// 2-second poll, so the header box is read afresh on every click rather than remembered.
"use strict";

document.addEventListener("change", (event) => {
  const all = event.target.closest("input#select-all");
  if (!all || !all.form) {
    return;
  }
  for (const box of all.form.querySelectorAll('input[type="checkbox"][name="host"]')) {
    box.checked = all.checked;
  }
});
