"use strict";
// The "API key created" page: copy the one-time key to the clipboard.
document.getElementById("copy-api-key").addEventListener("click", async () => {
  const input = document.getElementById("new-api-key");
  const status = document.getElementById("copy-status");
  try {
    await navigator.clipboard.writeText(input.value);
    status.textContent = "Copied.";
  } catch (err) {
    input.select();
    status.textContent = "Select and copy with Ctrl+C.";
  }
});
