"use strict";
// The facade form's catalog picker: picking a catalog model copies its prices (USD) and price rules
// from the page's data island into the inputs, which stay editable (a negotiated discount).
document.addEventListener("DOMContentLoaded", () => {
  const picker = document.getElementById("id_catalog_ref");
  const island = document.getElementById("facade-catalog-data");
  if (!picker || !island) return;  // read-only for this user
  const catalog = JSON.parse(island.textContent);
  picker.addEventListener("change", () => {
    const entry = catalog.models[picker.value];
    if (!entry) return;  // "none": the prices are left as they are
    const [prices, rules] = entry;
    catalog.fields.forEach((field, i) => {
      const input = document.getElementById(`id_${field}`);
      if (input) input.value = prices[i];
    });
    const rulesInput = document.getElementById("id_price_rules");
    if (rulesInput) rulesInput.value = Object.keys(rules).length ? JSON.stringify(rules, null, 1) : "";
  });
});
