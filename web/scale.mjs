// The page on large bundles: opens each bundle from its URL (?bundle=) in headless Chromium
// (WebGPU on SwiftShader), and prints the seconds from navigation to the overview (the page's
// `seedscope-summary` console line, written once the bundle is open and drawn), the bytes
// fetched, the WebAssembly memory at the end (it only grows: the peak) and any error the page
// showed. A bundle too large for the page must end in its message, not a crashed tab.
//
// Usage: node web/scale.mjs --dist web/dist BUNDLE_DIR... [--chromium PATH]
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const argv = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv.splice(i, 2)[1] : dflt;
};
const dist = path.resolve(opt("dist", "web/dist"));
const chromiumPath = opt("chromium", "/usr/bin/chromium");
const bundles = argv.map((b) => path.resolve(b));

function serve(bundleDir, served) {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://127.0.0.1");
    const [root, rel] = url.pathname.startsWith("/bundle/")
      ? [bundleDir, url.pathname.slice("/bundle/".length)]
      : [dist, url.pathname === "/" ? "index.html" : url.pathname.slice(1)];
    const file = path.resolve(root, decodeURIComponent(rel));
    if (!file.startsWith(root) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
      res.writeHead(404).end("not found");
      return;
    }
    const size = fs.statSync(file).size;
    if (root === bundleDir) served.bytes += size;
    res.writeHead(200, { "content-length": size });
    fs.createReadStream(file).pipe(res);
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

const WEBGPU = ["--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-vulkan=swiftshader", "--use-webgpu-adapter=swiftshader", "--use-angle=swiftshader"];
for (const bundle of bundles) {
  const served = { bytes: 0 };
  const server = await serve(bundle, served);
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
    if (done || crashed || Date.now() - t0 > 300000) {
      outcome = crashed ? "the tab crashed" : done ?? `no overview within 300 s; last console line: ${log.at(-1)}`;
      break;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  const seconds = (Date.now() - t0) / 1000;
  const memory = crashed ? NaN : await page.evaluate(() => (window.__seedscopeMemory ? window.__seedscopeMemory() : NaN));
  const manifest = JSON.parse(fs.readFileSync(path.join(bundle, "manifest.json"), "utf8"));
  const neurons = manifest.n_layers * manifest.d_mlp;
  const ok = outcome.startsWith("seedscope-summary");
  console.log(`${path.basename(bundle)} (${neurons} neurons): ${ok ? "overview" : outcome.slice(0, 200)} after ${seconds.toFixed(1)} s; ${(served.bytes / 1e6).toFixed(1)} MB fetched; WebAssembly memory ${(memory / 2 ** 20).toFixed(0)} MiB`);
  await context.close();
  fs.rmSync(profile, { recursive: true, force: true });
  server.close();
  if (crashed) process.exitCode = 1;
}
