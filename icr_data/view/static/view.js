// icr-data view: the only script. Keeps the pairs filter form's empty fields out of the URL,
// so a shared link names only the filters in use. The pages work without it.
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form.id !== "filters" && form.id !== "eval-filters") return;
  for (const field of form.querySelectorAll("input, select")) {
    if (field.value === "") field.disabled = true;
  }
});
window.addEventListener("pageshow", () => {
  for (const field of document.querySelectorAll("#filters [disabled], #eval-filters [disabled]")) {
    field.disabled = false;
  }
});
