// The page on large bundles: opens each bundle from its URL (?bundle=) in headless Chromium
// (WebGPU on SwiftShader), and prints the seconds from navigation to the overview (the page's
// `seedscope-summary` console line, written once the bundle is open and drawn), the bytes
// fetched, the WebAssembly memory at the end (it only grows: the peak) and any error the page
// showed. A bundle too large for the page must end in its message, not a crashed tab.
//
// Usage: node web/scale.mjs --dist web/dist BUNDLE_DIR... [--chromium PATH] [--timeout-s S]
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";
import { serve } from "./server.mjs";

const argv = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv.splice(i, 2)[1] : dflt;
};
const dist = path.resolve(opt("dist", "web/dist"));
const chromiumPath = opt("chromium", "/usr/bin/chromium");
const limitMs = Number(opt("timeout-s", "300")) * 1000;
const bundles = argv.map((b) => path.resolve(b));

const ok = (outcome) => outcome.startsWith("seedscope-summary");
const WEBGPU = ["--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-vulkan=swiftshader", "--use-webgpu-adapter=swiftshader", "--use-angle=swiftshader"];
for (const bundle of bundles) {
  const served = { bytes: 0 };
  const server = await serve(dist, bundle, served);
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "seedscope-scale-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: chromiumPath,
    headless: true,
    viewport: { width: 1280, height: 860 },
    args: ["--no-sandbox", "--disable-background-networking", "--no-first-run", ...WEBGPU],
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const log = [];
  let crashed = false;
  page.on("console", (m) => log.push(m.text()));
  page.on("crash", () => { crashed = true; });
  const t0 = Date.now();
  await page.goto(`http://127.0.0.1:${server.address().port}/?bundle=/bundle`);
  let outcome;
  for (;;) {
    const done = log.find((l) => l.startsWith("seedscope-summary") || l.startsWith("seedscope-error"));
    if (done || crashed || Date.now() - t0 > limitMs) {
      outcome = crashed ? "the tab crashed" : done ?? `no overview within ${limitMs / 1000} s`;
      break;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  const seconds = (Date.now() - t0) / 1000;
  let memory = NaN;
  try {
    memory = await page.evaluate(() => (window.__seedscopeMemory ? window.__seedscopeMemory() : NaN));
  } catch (e) {
    outcome = ok(outcome) ? outcome : `${outcome}; the page is gone (${e.message.split("\n")[0]})`;
  }
  const manifest = JSON.parse(fs.readFileSync(path.join(bundle, "manifest.json"), "utf8"));
  const neurons = manifest.n_layers * manifest.d_mlp;
  const good = ok(outcome);
  console.log(`${path.basename(bundle)} (${neurons} neurons): ${good ? "overview" : outcome.slice(0, 300)} after ${seconds.toFixed(1)} s; ${(served.bytes / 1e6).toFixed(1)} MB fetched; WebAssembly memory ${(memory / 2 ** 20).toFixed(0)} MiB`);
  await context.close();
  fs.rmSync(profile, { recursive: true, force: true });
  server.close();
  if (!good) {
    console.log(`    last console lines:\n    ${log.slice(-8).join("\n    ")}`);
    process.exitCode = 1;
  }
}
