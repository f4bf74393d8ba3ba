#!/usr/bin/env node
// The real-browser check of the mails' HTML: every *.html of a
// `notifier templates preview` folder is loaded in Chromium, with the
// network cut off, and checked at viewport widths 600 and 375.
//
//   node check.mjs DIR        check DIR/*.html (KIND.html and KIND.hostile.html)
//   node check.mjs FILE...    check these files
//   node check.mjs --self-test  prove each check can fail (fixtures/good.html, one defect a case)
//
// Checks, each reported under its code word:
//   network   the page requested anything (image, font, stylesheet, pixel), or
//             refers to something it did not fetch (a lazy image, srcset, CSS url())
//   active    script, frame, form, event handler or javascript: URL in the mail
//   lang      <html> has no lang="nl"
//   cta       not exactly one <a href>, or its href is not https://, or it shows no text
//   overflow  the page is wider than the viewport (horizontal scrolling)
//   clipped   an element that clips (overflow hidden/clip) cuts off its content
//   wordbreak a word of at most 20 characters is split over lines (a squeezed column)
//   contrast  visible text below 4.5:1 against its background (3:1 for large text)
//   pair      (DIR only) a KIND.html without KIND.hostile.html, or the reverse
//
// One line per file and width; exit 1 on any failure, 2 when it cannot run.
// Chromium: $CHROMIUM, default /usr/bin/chromium (Debian package chromium).

import { chromium } from 'playwright-core';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export const WIDTHS = [600, 375];
const HEIGHT = 800;
const HERE = dirname(fileURLToPath(import.meta.url));

/** Starts the one browser a run uses. */
export async function launchBrowser() {
  const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
  if (!existsSync(executablePath)) {
    throw new Error(
      `no Chromium at ${executablePath}: install it (apt-get install chromium) or set CHROMIUM`,
    );
  }
  // Playwright adds --headless and a fresh --user-data-dir itself.
  return chromium.launch({
    executablePath,
    chromiumSandbox: false,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
}

/**
 * A page whose every request is refused, except the mail itself: the mail is
 * served at https://mail.invalid/NAME, so relative URLs also become requests
 * that show up here (from file:// they would read the disk silently).
 */
export async function newMailPage(browser) {
  const context = await browser.newContext({
    viewport: { width: WIDTHS[0], height: HEIGHT },
    deviceScaleFactor: 1,
    colorScheme: 'light',
    reducedMotion: 'reduce',
    locale: 'nl-NL',
    timezoneId: 'Europe/Amsterdam',
    serviceWorkers: 'block',
  });
  const page = await context.newPage();
  const state = { url: null, body: null, requests: new Set(), dialogs: [] };
  await context.route('**/*', (route) => {
    const url = route.request().url();
    if (url === state.url) {
      return route.fulfill({ status: 200, contentType: 'text/html; charset=utf-8', body: state.body });
    }
    state.requests.add(url);
    return route.abort('blockedbyclient');
  });
  // Requests the router does not see (the browser's own, websockets).
  page.on('request', (r) => {
    const url = r.url();
    if (url !== state.url && !url.startsWith('data:')) state.requests.add(url);
  });
  page.on('websocket', (ws) => state.requests.add(ws.url()));
  page.on('dialog', (d) => {
    state.dialogs.push(d.type());
    d.dismiss().catch(() => {});
  });
  return {
    page,
    context,
    /** Loads `file`, forgetting what the previous one requested. */
    async open(file) {
      state.url = `https://mail.invalid/${encodeURIComponent(basename(file))}`;
      state.body = readFileSync(file);
      state.requests = new Set();
      state.dialogs = [];
      await page.setViewportSize({ width: WIDTHS[0], height: HEIGHT });
      await page.goto(state.url, { waitUntil: 'load' });
    },
    /** What the open file requested and the dialogs it opened, so far. */
    seen() {
      return { requests: [...state.requests], dialogs: [...state.dialogs] };
    },
  };
}

/**
 * Runs in the page: the failures of the current layout, each
 * { code, detail }. Everything it needs is inside (it is serialised).
 * `requested`: the URLs already reported as requests.
 */
function inspectLayout(requested) {
  const failures = [];
  const fail = (code, detail) => failures.push({ code, detail });
  const vw = window.innerWidth;
  const show = (s, n = 40) => {
    const t = (s || '').replace(/\s+/g, ' ').trim();
    return t.length > n ? `${t.slice(0, n)}…` : t;
  };
  const describe = (el) => `<${el.tagName.toLowerCase()}> "${show(el.textContent)}"`;
  const visible = (el) =>
    el.checkVisibility({ opacityProperty: true, visibilityProperty: true }) &&
    el.getClientRects().length > 0;

  // lang
  const lang = document.documentElement.getAttribute('lang');
  if (!/^nl(-[a-z]{2})?$/i.test(lang || '')) {
    fail('lang', lang === null ? '<html> has no lang attribute' : `<html lang="${lang}">, not nl`);
  }

  // references the browser did not (yet) fetch: a lazy image below the
  // fold, a source for another screen size; a mail refers to nothing
  const refs = [];
  for (const el of document.querySelectorAll('[src], [srcset], [background], [poster], object[data], link[href]')) {
    for (const name of ['src', 'srcset', 'background', 'poster', 'data', 'href']) {
      if (name === 'data' && el.tagName !== 'OBJECT') continue;
      if (name === 'href' && el.tagName !== 'LINK') continue;
      const v = el.getAttribute(name);
      if (v !== null && v.trim() !== '') refs.push([el, v.trim()]);
    }
  }
  const css = [...document.querySelectorAll('[style]')].map((el) => [el, el.getAttribute('style')])
    .concat([...document.querySelectorAll('style')].map((el) => [el, el.textContent]));
  for (const [el, text] of css) {
    for (const m of text.matchAll(/url\(\s*['"]?([^'")]*)/gi)) refs.push([el, m[1].trim()]);
    for (const m of text.matchAll(/@import\s+['"]([^'"]*)/gi)) refs.push([el, m[1].trim()]);
  }
  for (const [el, v] of refs) {
    if (/^data:/i.test(v)) continue;
    let url = v;
    try {
      url = new URL(v.split(/[\s,]/)[0], document.baseURI).href;
    } catch {
      // reported as written
    }
    if (!requested.includes(url)) fail('network', `<${el.tagName.toLowerCase()}> refers to ${show(v, 80)}`);
  }

  // active content: a mail runs no code and submits nothing
  const active = document.querySelectorAll(
    'script, iframe, frame, object, embed, applet, form, input, button, textarea, select, base, meta[http-equiv="refresh" i]',
  );
  for (const el of active) fail('active', `<${el.tagName.toLowerCase()}> element`);
  for (const el of document.querySelectorAll('*')) {
    for (const a of el.attributes) {
      if (/^on/i.test(a.name)) fail('active', `${a.name}= on <${el.tagName.toLowerCase()}>`);
      if (/^\s*(javascript|vbscript):/i.test(a.value)) {
        fail('active', `${a.name}="${show(a.value, 20)}" on <${el.tagName.toLowerCase()}>`);
      }
    }
  }

  // call to action: exactly one link, https, visible with a label
  const links = [...document.querySelectorAll('a[href], area[href]')];
  if (links.length === 0) {
    fail('cta', 'no <a href> (the button)');
  } else if (links.length > 1) {
    fail('cta', `${links.length} links, expected one (the button): ${links.map((a) => show(a.getAttribute('href'), 50)).join(', ')}`);
  } else {
    const a = links[0];
    const href = a.getAttribute('href').trim();
    let https = false;
    try {
      https = /^https:\/\//i.test(href) && new URL(href).protocol === 'https:' && new URL(href).host !== '';
    } catch {
      https = false;
    }
    if (!https) fail('cta', `href "${show(href, 60)}" is not an https:// URL`);
    if (!visible(a)) fail('cta', 'the button is not visible');
    else if (!a.innerText.trim()) fail('cta', 'the button shows no text');
  }

  // horizontal overflow of the page
  const sw = document.scrollingElement.scrollWidth;
  if (sw > vw) {
    // Name the outermost element that reaches past the edge, and the widest
    // word when a word is what does not fit.
    const past = (el) => el.getBoundingClientRect().right > vw + 0.5;
    let outer = null;
    for (const el of document.body.querySelectorAll('*')) {
      if (visible(el) && past(el) && !past(el.parentElement)) {
        outer = el;
        break;
      }
    }
    let word = null;
    let wordWidth = vw;
    const range = document.createRange();
    const texts = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let n = texts.nextNode(); n; n = texts.nextNode()) {
      if (!n.data.trim() || !visible(n.parentElement)) continue;
      for (const m of n.data.matchAll(/\S+/g)) {
        range.setStart(n, m.index);
        range.setEnd(n, m.index + m[0].length);
        const w = Math.max(0, ...[...range.getClientRects()].map((r) => r.width));
        if (w > wordWidth) [word, wordWidth] = [n.parentElement, w];
      }
    }
    const where = [
      outer && `from ${describe(outer)}`,
      word && `a word ${Math.round(wordWidth)}px wide in ${describe(word)}`,
    ].filter(Boolean).join('; ');
    fail('overflow', `page is ${sw}px wide in a ${vw}px viewport${where ? `; ${where}` : ''}`);
  }

  // text cut off by a clipping box (hidden elements, such as the preheader, skipped)
  for (const el of document.body.querySelectorAll('*')) {
    if (!visible(el)) continue;
    const cs = getComputedStyle(el);
    const clips = (v) => v === 'hidden' || v === 'clip';
    const x = clips(cs.overflowX) && el.scrollWidth > el.clientWidth;
    const y = clips(cs.overflowY) && el.scrollHeight > el.clientHeight;
    if (x || y) {
      const dims = [x && `${el.scrollWidth}px content in ${el.clientWidth}px width`, y && `${el.scrollHeight}px content in ${el.clientHeight}px height`];
      fail('clipped', `${describe(el)}: ${dims.filter(Boolean).join(', ')}`);
    }
  }

  // short words broken in the middle: a column squeezed to nothing (a label
  // beside a value that may wrap anywhere) shows "Zorgverzekera / ar". A
  // word may still break after a hyphen or slash; long words (hostile
  // names, links) may break anywhere.
  const broken = [];
  const words = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const wordRange = document.createRange();
  for (let n = words.nextNode(); n; n = words.nextNode()) {
    if (!n.data.trim() || !visible(n.parentElement)) continue;
    for (const word of n.data.matchAll(/[^\s\u200b\u2060]+/g)) {
      if ([...word[0]].length > 20) continue;
      for (const part of word[0].matchAll(/[^-\u2010/]+[-\u2010/]?/g)) {
        const at = word.index + part.index;
        wordRange.setStart(n, at);
        wordRange.setEnd(n, at + part[0].length);
        const lines = new Set([...wordRange.getClientRects()].filter((r) => r.width > 0).map((r) => Math.round(r.bottom)));
        if (lines.size > 1) broken.push(`"${part[0]}" over ${lines.size} lines in ${describe(n.parentElement)}`);
      }
    }
  }
  if (broken.length) {
    fail('wordbreak', `${broken.slice(0, 3).join(', ')}${broken.length > 3 ? ` and ${broken.length - 3} more` : ''}`);
  }

  // contrast of visible text (WCAG 2 relative luminance)
  const parse = (s) => {
    const m = /^rgba?\(([\d.]+),\s*([\d.]+),\s*([\d.]+)(?:,\s*([\d.]+))?\)$/.exec(s);
    return m ? { r: +m[1], g: +m[2], b: +m[3], a: m[4] === undefined ? 1 : +m[4] } : null;
  };
  const over = (top, under) => ({
    r: top.r * top.a + under.r * (1 - top.a),
    g: top.g * top.a + under.g * (1 - top.a),
    b: top.b * top.a + under.b * (1 - top.a),
    a: 1,
  });
  const lum = (c) => {
    const ch = (v) => {
      const s = v / 255;
      return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
    };
    return 0.2126 * ch(c.r) + 0.7152 * ch(c.g) + 0.0722 * ch(c.b);
  };
  const hex = (c) => `#${[c.r, c.g, c.b].map((v) => Math.round(v).toString(16).padStart(2, '0')).join('')}`;
  const background = (el) => {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const cs = getComputedStyle(e);
      if (cs.backgroundImage !== 'none') return null;
      const c = parse(cs.backgroundColor);
      if (c && c.a > 0) {
        layers.push(c);
        if (c.a >= 1) break;
      }
    }
    // Below everything: the canvas, white.
    return layers.reverse().reduce((under, top) => over(top, under), { r: 255, g: 255, b: 255, a: 1 });
  };
  const seen = new Set();
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement;
    if (!el || seen.has(el) || !n.data.trim()) continue;
    seen.add(el);
    if (!visible(el)) continue;
    const cs = getComputedStyle(el);
    const bg = background(el);
    if (!bg) {
      fail('contrast', `${describe(el)} is over a background image; contrast cannot be checked`);
      continue;
    }
    const fg = parse(cs.color);
    if (!fg) {
      fail('contrast', `${describe(el)}: unreadable color ${cs.color}`);
      continue;
    }
    let opacity = 1;
    for (let e = el; e; e = e.parentElement) opacity *= +getComputedStyle(e).opacity;
    const text = over({ ...fg, a: fg.a * opacity }, bg);
    const [hi, lo] = [lum(text), lum(bg)].sort((p, q) => q - p);
    const ratio = (hi + 0.05) / (lo + 0.05);
    const size = parseFloat(cs.fontSize);
    const large = size >= 24 || (size >= 18.66 && +cs.fontWeight >= 700);
    const need = large ? 3 : 4.5;
    if (ratio < need) {
      fail('contrast', `${describe(el)}: ${ratio.toFixed(2)}:1 (${hex(text)} on ${hex(bg)}, needs ${need}:1)`);
    }
  }
  return failures;
}

// Hostile text holds bidi overrides and zero-width characters; printed raw
// they would reorder or hide parts of the report line.
const printable = (s) =>
  s.replace(/[\u0000-\u001f\u007f-\u009f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]/g,
    (c) => `\\u{${c.codePointAt(0).toString(16)}}`);

/**
 * Checks each file at each width with one page; returns
 * [{ file, width, failures: [{code, detail}] }].
 */
export async function checkFiles(mail, files) {
  const results = [];
  for (const file of files) {
    await mail.open(file);
    for (const width of WIDTHS) {
      await mail.page.setViewportSize({ width, height: HEIGHT });
      const failures = await mail.page.evaluate(inspectLayout, mail.seen().requests);
      // Read after the layout at this width: what it made the page fetch.
      const { requests, dialogs } = mail.seen();
      for (const url of requests) failures.unshift({ code: 'network', detail: `requested ${url.slice(0, 100)}` });
      for (const d of dialogs) failures.unshift({ code: 'active', detail: `opened a ${d} dialog` });
      results.push({ file, width, failures });
    }
  }
  return results;
}

function reportLine({ file, width, failures }) {
  const name = basename(file);
  if (failures.length === 0) return `ok   ${width} ${name}`;
  const MAX = 6;
  const parts = failures.slice(0, MAX).map((f) => `${f.code}: ${f.detail}`);
  if (failures.length > MAX) parts.push(`(${failures.length - MAX} more)`);
  return printable(`FAIL ${width} ${name}: ${parts.join('; ')}`);
}

/** KIND.html and KIND.hostile.html must come in pairs: a preview that
 * lost its hostile variants would otherwise pass with less checked. */
function unpaired(files) {
  const names = new Set(files.map((f) => basename(f)));
  const missing = [];
  for (const n of names) {
    const twin = n.endsWith('.hostile.html') ? n.replace(/\.hostile\.html$/, '.html') : n.replace(/\.html$/, '.hostile.html');
    if (!names.has(twin)) missing.push(`${n} has no ${twin}`);
  }
  return missing;
}

async function checkCommand(args) {
  let files;
  let pairs = [];
  if (args.length === 1 && existsSync(args[0]) && statSync(args[0]).isDirectory()) {
    files = readdirSync(args[0]).filter((n) => n.endsWith('.html')).sort().map((n) => join(args[0], n));
    if (files.length === 0) {
      console.error(`browser check: no .html files in ${args[0]} (write them with: notifier templates preview --output ${args[0]})`);
      return 2;
    }
    pairs = unpaired(files);
  } else {
    files = args;
    const gone = files.filter((f) => !existsSync(f));
    if (gone.length) {
      console.error(`browser check: no such file: ${gone.join(', ')}`);
      return 2;
    }
  }
  const started = Date.now();
  const browser = await launchBrowser();
  try {
    const mail = await newMailPage(browser);
    const results = await checkFiles(mail, files);
    for (const r of results) console.log(reportLine(r));
    for (const p of pairs) console.log(`FAIL pair: ${p}`);
    const failed = results.filter((r) => r.failures.length).length + pairs.length;
    console.log(
      `browser check: ${files.length} files at ${WIDTHS.join(' and ')} px, ${results.length} checks, ${failed} failed (${((Date.now() - started) / 1000).toFixed(1)} s, ${browser.version()})`,
    );
    return failed ? 1 : 0;
  } finally {
    await browser.close();
  }
}

// The self-test's cases: fixtures/good.html passes; every other case is
// good.html with one defect (`find` replaced by `put`) and must fail with
// exactly these codes per width, so any other code is a false alarm.
const CTA = '<a href="https://zip.example.nl/contract/C-2027-118734" style="display:inline-block;';
const CARD = 'style="width:100%;max-width:600px;';
const FOOTER = 'color:#4a4a4a;">Dit is een automatisch verzonden servicebericht van het Zorginkoopportaal.';
const GREETING = '<p style="margin:0;">Met vriendelijke groet,';
const LONG = 'W'.repeat(300);
const both = (codes) => ({ 600: codes, 375: codes });
const SELF_TEST = {
  good: { expect: both([]) },
  // A 700px table overflows at both widths; a 480px one only on a phone.
  wide: { expect: both(['overflow']), find: CARD, put: 'style="width:700px;' },
  'wide-mobile': { expect: { 600: [], 375: ['overflow'] }, find: CARD, put: 'style="width:480px;' },
  // A hostile name in a cell that does not wrap it.
  longword: { expect: both(['overflow']), find: FOOTER, put: `${FOOTER} ${LONG}` },
  'http-cta': { expect: both(['cta']), find: CTA, put: CTA.replace('https:', 'http:') },
  'no-cta': { expect: both(['cta']), find: CTA, put: '<a style="display:inline-block;' },
  'two-links': {
    expect: both(['cta']),
    find: 'klaar: Overeenkomst fysiotherapie 2027.',
    put: 'klaar: <a href="https://zip.example.nl/" style="color:#154273;">Overeenkomst fysiotherapie 2027</a>.',
  },
  // The button label cut off by a clipping box.
  clipped: { expect: both(['clipped']), find: CTA, put: `${CTA}width:120px;overflow:hidden;white-space:nowrap;` },
  // A label beside a long value in a cell that may break anywhere: the
  // label column is squeezed and its words broken.
  squeezed: {
    expect: both(['wordbreak']),
    find: '<p style="margin:0 0 16px 0;">Geachte gebruiker,</p>',
    put: `<p style="margin:0 0 16px 0;">Geachte gebruiker,</p><table role="presentation"><tr><td style="padding:2px 16px 2px 0;">Zorgverzekeraar</td><td>${LONG}</td></tr></table>`,
  },
  lowcontrast: { expect: both(['contrast']), find: FOOTER, put: FOOTER.replace('#4a4a4a', '#aaaaaa') },
  // A tracking pixel; a relative stylesheet (a request to the page's own
  // origin); an image below the fold loaded lazily (never requested, still a reference).
  external: { expect: both(['network']), find: GREETING, put: `<img src="https://example.com/x.png" width="1" height="1" alt="">${GREETING}` },
  'external-css': { expect: both(['network']), find: '</head>', put: '<link rel="stylesheet" href="mail.css"></head>' },
  'lazy-image': {
    expect: both(['network']),
    find: GREETING,
    put: `<div style="height:3000px;"></div><img src="https://example.com/logo.png" loading="lazy" width="10" height="10" alt="">${GREETING}`,
  },
  'no-lang': { expect: both(['lang']), find: '<html lang="nl">', put: '<html>' },
  // A hostile name that was not escaped.
  script: { expect: both(['active']), find: 'Geachte gebruiker,', put: 'Geachte <b>gebruiker</b><script>document.title = "x"</script>,' },
};

/** Writes every self-test case into a fresh folder; returns its path. */
function writeCases() {
  const good = readFileSync(join(HERE, 'fixtures', 'good.html'), 'utf8');
  const dir = mkdtempSync(join(tmpdir(), 'mail-self-test-'));
  for (const [name, c] of Object.entries(SELF_TEST)) {
    if (c.find !== undefined && !good.includes(c.find)) {
      throw new Error(`self-test case ${name}: fixtures/good.html no longer contains ${JSON.stringify(c.find)}`);
    }
    writeFileSync(join(dir, `${name}.html`), c.find === undefined ? good : good.replace(c.find, c.put));
  }
  return dir;
}

async function selfTest() {
  const dir = writeCases();
  const problems = [];
  const names = Object.keys(SELF_TEST);
  const browser = await launchBrowser();
  try {
    const mail = await newMailPage(browser);
    const results = await checkFiles(mail, names.map((n) => join(dir, `${n}.html`)));
    for (const r of results) {
      const name = basename(r.file, '.html');
      const want = SELF_TEST[name].expect[r.width];
      const got = [...new Set(r.failures.map((f) => f.code))].sort();
      const okay = got.join() === [...want].sort().join();
      console.log(`${okay ? 'ok  ' : 'BAD '} self-test ${name} @${r.width}: expected ${want.length ? want.join(',') : 'pass'}, got ${got.length ? reportLine(r).replace(/^FAIL \d+ [^:]+: /, '') : 'pass'}`);
      if (!okay) problems.push(`${name} @${r.width}`);
    }
  } finally {
    await browser.close();
  }
  // The command itself: exit 0 on a good file, 1 on a bad one.
  for (const [name, want] of [['good', 0], ['wide', 1]]) {
    const run = spawnSync(process.execPath, [fileURLToPath(import.meta.url), join(dir, `${name}.html`)], { encoding: 'utf8' });
    const okay = run.status === want;
    console.log(`${okay ? 'ok  ' : 'BAD '} self-test exit status on ${name}: expected ${want}, got ${run.status}`);
    if (!okay) problems.push(`exit status on ${name}: ${run.status}\n${run.stdout}${run.stderr}`);
  }
  rmSync(dir, { recursive: true, force: true });
  if (problems.length) {
    console.log(`browser self-test FAILED: the checker misjudges ${problems.join('; ')}`);
    return 1;
  }
  console.log(`browser self-test: all ${names.length} cases judged as expected`);
  return 0;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  let run;
  if (args[0] === '--self-test' && args.length === 1) run = selfTest();
  else if (args.length >= 1 && !args[0].startsWith('-')) run = checkCommand(args);
  else {
    console.error('usage: node check.mjs DIR | FILE... | --self-test');
    process.exit(2);
  }
  run.then(
    (code) => process.exit(code),
    (err) => {
      console.error(`browser check could not run: ${err.message}`);
      process.exit(2);
    },
  );
}
