// The usage pages' two charts, from the "usage-chart-data" JSON island. Colours come from the
// admin's CSS variables and are re-read when the theme changes (toggle or system preference).
"use strict";
{
    const data = JSON.parse(document.getElementById("usage-chart-data").textContent);
    const charts = [];

    function colour(name) {
        return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    }

    function palette() {
        return {
            text: colour("--body-quiet-color"),
            grid: colour("--hairline-color"),
            spend: colour("--secondary"),
            input: colour("--link-fg"),
            output: colour("--accent"),
        };
    }

    // Dollars with `decimals` digits after the point (formats kept, one per count).
    const usdFormats = new Map();
    function usdWith(decimals) {
        if (!usdFormats.has(decimals)) {
            usdFormats.set(decimals, new Intl.NumberFormat(undefined, {
                style: "currency", currency: "USD", minimumFractionDigits: decimals, maximumFractionDigits: decimals}));
        }
        return usdFormats.get(decimals);
    }

    // Per-request prices make amounts of fractions of a cent, which two decimals would all show as
    // "$0.00". An axis tick gets the decimals that show the axis' step exactly (a step of 0.0005: 4),
    // so ticks read apart; a single value (a tooltip) two significant digits, as the pages' amounts
    // (usage.money.usd_for_people). At least the cents' two; zero is "$0".
    const MAX_DECIMALS = 20;  // Intl's limit; the amounts are whole nanodollars, so 10 is the most needed
    function stepDecimals(step) {
        let decimals = 2;
        while (decimals < MAX_DECIMALS && Math.abs(step * 10 ** decimals - Math.round(step * 10 ** decimals)) > 1e-6) {
            decimals++;
        }
        return decimals;
    }
    function valueDecimals(value) {
        return Math.min(MAX_DECIMALS, Math.max(2, 1 - Math.floor(Math.log10(Math.abs(value)))));
    }
    function usd(value, ticks) {
        if (value === 0) {
            return usdWith(0).format(0);
        }
        if (ticks && ticks.length > 1) {
            const step = Math.min(...ticks.slice(1).map((tick, i) => tick.value - ticks[i].value));
            return usdWith(stepDecimals(step)).format(value);
        }
        return usdWith(valueDecimals(value)).format(value);
    }
    const tokens = new Intl.NumberFormat(undefined, {notation: "compact", maximumFractionDigits: 1});
    const day = new Intl.DateTimeFormat(undefined, {month: "short", day: "numeric", timeZone: "UTC"});
    const labels = data.labels.map((iso) => day.format(new Date(iso + "T00:00:00Z")));

    function options(format, legend) {
        return {
            animation: false,
            maintainAspectRatio: false,
            interaction: {mode: "index", intersect: false},
            plugins: {
                legend: {display: legend},
                tooltip: {callbacks: {label: (item) => `${item.dataset.label}: ${format(item.parsed.y)}`}},
            },
            scales: {
                x: {grid: {display: false}, ticks: {maxRotation: 0, autoSkipPadding: 12}},
                y: {beginAtZero: true, ticks: {callback: (value, index, ticks) => format(value, ticks)}},
            },
        };
    }

    // Built whole on each theme change: Chart.js caches resolved colours per element.
    function draw() {
        const p = palette();
        Chart.defaults.color = p.text;
        Chart.defaults.borderColor = p.grid;
        charts.splice(0).forEach((chart) => chart.destroy());
        charts.push(new Chart(document.getElementById("activity-trend"), {
            type: "line",
            data: {labels, datasets: [{
                label: "Spend", data: data.spend, fill: true, cubicInterpolationMode: "monotone", pointRadius: 0,
                borderColor: p.spend, backgroundColor: p.spend + "33",  // the admin's colours are #rrggbb
            }]},
            options: options(usd, false),
        }));
        const stacked = options((v) => tokens.format(v), true);
        stacked.scales.x.stacked = stacked.scales.y.stacked = true;
        charts.push(new Chart(document.getElementById("token-consumption"), {
            type: "bar",
            data: {labels, datasets: [
                {label: "Input tokens", data: data.input, backgroundColor: p.input, categoryPercentage: 0.9},
                {label: "Output tokens", data: data.output, backgroundColor: p.output, categoryPercentage: 0.9},
            ]},
            options: stacked,
        }));
    }

    window.addEventListener("DOMContentLoaded", () => {
        draw();
        new MutationObserver(draw).observe(document.documentElement, {attributes: true, attributeFilter: ["data-theme"]});
        window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", draw);
    });
}
