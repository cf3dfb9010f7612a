// The trace viewer in a real browser (Debian's chromium driven by playwright-core), against a
// running `weft up`. Started by cli/tests/viewer.rs, which passes:
//   GATEWAY, VIEWER            base URLs of the REST API and of the viewer's page
//   ADMIN_EMAIL, ADMIN_PASSWORD an administrator made with `weft admin create`
//   OUT_DIR                    where the screenshots go
//   CHROMIUM                   the browser executable
//   PLAYWRIGHT_MODULES         the node_modules folder holding playwright-core
// It prints one JSON line on success: {"order": <request id>, "failed": ..., "token": ...}.
// Any failed check throws: the process exits non-zero with the reason.

import { createRequire } from "node:module";
import { mkdirSync } from "node:fs";
import path from "node:path";

const env = process.env;
const require = createRequire(path.join(env.PLAYWRIGHT_MODULES, "noop.js"));
const { chromium } = require("playwright-core");

const log = (...args) => console.error("[viewer.mjs]", ...args);

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function api(method, route, body, token) {
  const headers = { "content-type": "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  const response = await fetch(env.GATEWAY + route, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: response.status, json, text, requestId: response.headers.get("x-request-id") };
}

async function shot(page, name) {
  const file = path.join(env.OUT_DIR, name);
  await page.screenshot({ path: file });
  log("screenshot", file);
}

mkdirSync(env.OUT_DIR, { recursive: true });

// --- the data: an administrator adds a product, a user registers ---
const admin = await api("POST", "/v1/auth/login", { email: env.ADMIN_EMAIL, password: env.ADMIN_PASSWORD });
check(admin.status === 200, `admin login: ${admin.status} ${admin.text}`);
const product = await api("POST", "/v1/products",
  { name: "Viewer widget", unitPriceCents: "250", currency: "USD", stock: 50 }, admin.json.accessToken);
check(product.status === 200 || product.status === 201, `create product: ${product.status} ${product.text}`);
const user = await api("POST", "/v1/auth/register",
  { email: "viewer@example.com", password: "password-123", displayName: "Viewer" });
check(user.status === 200 || user.status === 201, `register: ${user.status} ${user.text}`);
const token = user.json.accessToken;

// --- the page, open before the order is placed ---
const browser = await chromium.launch({ executablePath: env.CHROMIUM, args: ["--no-sandbox"] });
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 760 } });
  page.on("pageerror", (err) => log("page error:", err.message));
  await page.goto(env.VIEWER + "/");
  await page.waitForFunction(() => document.querySelector("#live")?.textContent === "live", null, { timeout: 10_000 });
  // A mark that a reload would wipe out.
  await page.evaluate(() => { window.__notReloaded = true; });

  // The order appears in the list within 2 s, without a reload.
  const order = await api("POST", "/v1/orders",
    { items: [{ productId: product.json.id, quantity: 2 }] }, token);
  check(order.status === 200 || order.status === 201, `order: ${order.status} ${order.text}`);
  check(order.requestId, "the gateway echoes X-Request-Id");
  const placed = Date.now();
  const row = `tr.request[data-request-id="${order.requestId}"]`;
  await page.waitForSelector(row, { timeout: 2_000 });
  log(`the order was listed ${Date.now() - placed} ms after the gateway answered`);
  await page.waitForFunction((sel) => /^20[01]$/.test(document.querySelector(sel)?.dataset.status ?? ""), row, { timeout: 5_000 });
  check(await page.evaluate(() => window.__notReloaded === true), "the page was reloaded");
  const cells = await page.$eval(row, (tr) => [...tr.cells].map((c) => c.textContent));
  check(cells[1] === "POST" && cells[2] === "/v1/orders", `the row shows method and route: ${cells}`);
  check(/ms|s$/.test(cells[4]), `the row shows a duration: ${cells}`);
  await shot(page, "1-list.png");

  // The search finds it by the request id the gateway echoed.
  await page.fill("#search", order.requestId);
  await page.waitForFunction((rid) => {
    const rows = [...document.querySelectorAll("tr.request")];
    return rows.length === 1 && rows[0].dataset.requestId === rid;
  }, order.requestId, { timeout: 5_000 });
  await shot(page, "2-search.png");

  // Its waterfall: gateway -> order -> user, the database statements under the order's call.
  await page.click(row);
  const want = [
    ["weft-gateway", "POST /v1/orders"],
    ["weft-gateway", "weft.order.v1.OrderService/CreateOrder"],
    ["weft-order", "weft.order.v1.OrderService/CreateOrder"],
    ["weft-order", "weft.user.v1.UserService/GetUser"],
    ["weft-user", "weft.user.v1.UserService/GetUser"],
    ["weft-order", "UPDATE products"],
  ];
  await page.waitForFunction((want) => want.every(([svc, name]) =>
    document.querySelector(`#waterfall .span[data-service="${svc}"][data-name="${name}"]`)), want, { timeout: 10_000 });
  const spans = await page.$$eval("#waterfall .span", (rows) => rows.map((r, index) => ({
    index,
    id: r.dataset.spanId,
    parent: r.dataset.parentSpanId,
    service: r.dataset.service,
    name: r.dataset.name,
    depth: Number(r.dataset.depth),
    db: r.classList.contains("db"),
  })));
  const find = (service, name) => spans.find((s) => s.service === service && s.name === name);
  const chain = want.slice(0, 5).map(([svc, name]) => find(svc, name));
  check(chain[0].depth === 0 && chain[0].index === 0, "the gateway's span is the root, first");
  for (let i = 1; i < chain.length; i++) {
    check(chain[i].parent === chain[i - 1].id, `${chain[i].service} ${chain[i].name} is a child of ${chain[i - 1].service} ${chain[i - 1].name}`);
    check(chain[i].depth === chain[i - 1].depth + 1 && chain[i].index > chain[i - 1].index, `${chain[i].name} is drawn under its parent`);
  }
  const orderServer = chain[2];
  const byId = new Map(spans.map((s) => [s.id, s]));
  const descends = (span, ancestor) => {
    for (let cur = span, n = 0; cur && n < 32; cur = byId.get(cur.parent), n++) {
      if (cur.parent === ancestor.id) return true;
    }
    return false;
  };
  const statements = spans.filter((s) => s.db);
  check(statements.some((s) => s.name === "UPDATE products"), "the stock update's database span is there");
  for (const s of statements.filter((s) => s.service === "weft-order")) {
    check(descends(s, orderServer) && s.index > orderServer.index, `the statement ${s.name} is drawn under the order's call`);
  }
  const services = new Set(spans.map((s) => s.service));
  const colours = new Set(await page.$$eval("#legend span", (items) => items.map((i) => getComputedStyle(i).getPropertyValue("--c"))));
  check(colours.size === services.size, `a colour per service: ${[...colours]} for ${[...services]}`);
  // Attributes on click.
  await page.click(`#waterfall .span[data-service="weft-order"][data-name="UPDATE products"]`);
  await page.waitForSelector("#span-detail:not([hidden])");
  const detail = await page.textContent("#span-detail");
  check(detail.includes("db.system") && detail.includes("db.operation.name"), `the span's attributes show: ${detail}`);
  await shot(page, "3-waterfall.png");

  // The register request, listed since the page loaded: gateway -> auth -> user.
  await page.fill("#search", user.requestId);
  await page.waitForSelector(`tr.request[data-request-id="${user.requestId}"]`, { timeout: 5_000 });
  await page.click(`tr.request[data-request-id="${user.requestId}"]`);
  await page.waitForFunction(() => ["weft-gateway", "weft-auth", "weft-user"].every((svc) =>
    document.querySelector(`#waterfall .span[data-service="${svc}"][data-depth]`)), null, { timeout: 10_000 });
  const register = await page.$$eval("#waterfall .span", (rows) => rows.map((r) => ({
    id: r.dataset.spanId, parent: r.dataset.parentSpanId, service: r.dataset.service, name: r.dataset.name,
  })));
  const authServer = register.find((s) => s.service === "weft-auth" && s.name === "weft.auth.v1.AuthService/Register");
  const userServer = register.find((s) => s.service === "weft-user" && s.name === "weft.user.v1.UserService/CreateUser");
  check(authServer && userServer, `the register trace has auth and user server spans: ${JSON.stringify(register)}`);
  const registerById = new Map(register.map((s) => [s.id, s]));
  check(registerById.get(userServer.parent)?.service === "weft-auth", "weft-user's span is under weft-auth's call");
  await shot(page, "4-register.png");

  // A failed request is marked failed, in the list and in its waterfall.
  await page.fill("#search", "");
  const missing = await api("POST", "/v1/orders",
    { items: [{ productId: "00000000-0000-0000-0000-000000000000", quantity: 1 }] }, token);
  check(missing.status >= 400, `an order for no product fails: ${missing.status} ${missing.text}`);
  const failedRow = `tr.request[data-request-id="${missing.requestId}"]`;
  await page.waitForSelector(`${failedRow}.failed`, { timeout: 5_000 });
  const okClass = await page.$eval(row, (tr) => tr.className);
  check(!okClass.includes("failed"), `the successful order is not marked failed: ${okClass}`);
  await page.click(failedRow);
  await page.waitForFunction(() => document.querySelector("#detail-head")?.dataset.failed === "true", null, { timeout: 5_000 });
  await shot(page, "5-failed.png");

  // The README's picture: the list with both, the order's waterfall.
  await page.setViewportSize({ width: 1280, height: 520 });
  await page.click(row);
  await page.waitForFunction(() => document.querySelector("#detail-head")?.dataset.failed === "false", null, { timeout: 5_000 });
  await page.click(`#waterfall .span[data-service="weft-order"][data-name="UPDATE products"]`);
  await page.screenshot({ path: path.join(env.OUT_DIR, "readme.png") });

  console.log(JSON.stringify({ order: order.requestId, failed: missing.requestId, register: user.requestId, token, product: product.json.id }));
} finally {
  await browser.close();
}
