// A "Copy" button for text the page shows once (the enrollment command). A file of its own
// because the Content-Security-Policy allows no inline script. The text is read with
// textContent and written to the clipboard: it is never turned into markup.
"use strict";

document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-copy]");
  if (!button) {
    return;
  }
  const source = document.getElementById(button.dataset.copy);
  const status = document.getElementById(button.dataset.copyStatus);
  if (!source || !status) {
    return;
  }
  try {
    await navigator.clipboard.writeText(source.textContent.trim());
    status.textContent = "Copied.";
  } catch {
    // Clipboard access refused (browser setting): the line is still there to select.
    status.textContent = "Copying was refused by the browser; select the line and copy it.";
  }
});
