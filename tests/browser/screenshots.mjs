#!/usr/bin/env node
// The screenshot gallery of the mails: a full-page PNG of every sample mail
// (KIND.html of a `notifier templates preview` folder; the hostile variants
// are left out) at 600 and 375 px, and the page that shows them.
//
//   node screenshots.mjs DIR OUT
//
// writes OUT/KIND-600.png and OUT/KIND-375.png, and OUT.md next to OUT (for
// OUT = docs/mails: docs/mails.md, with images at mails/KIND-600.png).
// The same Chromium, fonts and preview give the same bytes: scale factor 1,
// no animations, no caret; Chromium's PNGs carry no time or other metadata.

import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, relative } from 'node:path';
import { WIDTHS, launchBrowser, newMailPage } from './check.mjs';

// Every kind, in the contract's order, with when it is sent
// (/work/shared/contract/README.md, "Module events", "Directory events",
// "Notices the notifier itself produces").
const SECTIONS = [
  ['Module mails', 'To the users of the event\'s AGB code who have the module\'s right.', {
    'uitvraag.vragenlijst_klaargezet': 'A zorgverzekeraar has put a questionnaire ready for the practice; to every user with the right `uitvragen`.',
    'uitvraag.herinnering_sluitingsdatum': 'Reminder that a questionnaire\'s closing date is near (with the days left); to every user with `uitvragen`.',
    'uitvraag.aanvulling_gevraagd': 'The zorgverzekeraar asks for an addition to a questionnaire, with its explanation; to every user with `uitvragen`.',
    'uitvraag.beoordeeld': 'A questionnaire has been assessed (the outcome is only shown in the portal); to every user with `uitvragen`.',
    'contract.voorstel_aangeboden': 'A zorgverzekeraar offers a contract proposal; to every user with `contracteren`, saying that only a tekenbevoegde can accept it.',
    'contract.herinnering_acceptatie': 'Reminder that a contract proposal still waits for acceptance before its deadline; to the tekenbevoegde users.',
    'contract.geaccepteerd': 'A contract proposal has been accepted; to every user with `contracteren` and to the user who accepted it.',
    'contract.administratief_vastgelegd': 'A contract has been recorded administratively; to every user with `contracteren`.',
    'onderhandeling.voorstel_gedaan': 'A proposal was made in a price and volume negotiation; to every user with `onderhandelen`, and a copy to the user who made it.',
    'onderhandeling.geaccordeerd': 'A negotiation has been agreed; to every user with `onderhandelen`, and a copy to the user who agreed it.',
    'onderhandeling.afgerond': 'A negotiation is concluded, with a contract or a price list as result; to every user with `onderhandelen` or `contracteren`.',
    'naleving.aanleververzoek': 'A request to deliver agreed figures for a period, before a deadline; to every user with `naleving`.',
  }],
  ['Directory mails', 'After a change in the directory of users.', {
    'gebruiker.emailadres_gewijzigd': 'Confirmation to the new address after a user\'s e-mail address was changed.',
    'gebruiker.emailadres_gewijzigd.oud_adres': 'Security notice to the old address after a user\'s e-mail address was changed (the one mail to a literal address).',
    'certificaat.ingetrokken': 'Confirmation to the contact persons of each of the user\'s AGB codes that the user\'s certificate was revoked.',
  }],
  ['Notices', 'Made by the notifier itself, to the contact persons of the AGB code.', {
    'beheer.geen_ontvanger': 'A module event found no recipient at the practice.',
    'beheer.geen_tekenbevoegde': 'A contract event needs a signer and no tekenbevoegde user is active (for the acceptance reminder also to the users with `contracteren`).',
    'beheer.laatste_tekenbevoegde_ingetrokken': 'The last active tekenbevoegde user was revoked: no contract can be concluded until a new user with signing rights is requested.',
    'beheer.onbestelbaar': 'A module mail to one of the practice\'s users ended failed (rejected address or deadline passed); names the user and the event, not the address.',
  }],
];

/** The Subject of KIND.eml, unfolded and decoded (RFC 2047), or null. */
function subjectOf(eml) {
  if (!existsSync(eml)) return null;
  const head = readFileSync(eml, 'utf8').split(/\r?\n\r?\n/)[0].replace(/\r?\n[ \t]+/g, ' ');
  const line = head.split(/\r?\n/).find((l) => /^subject:/i.test(l));
  if (!line) return null;
  return line
    .replace(/^subject:\s*/i, '')
    .replace(/\?=\s+=\?/g, '?==?')
    .replace(/=\?([^?]+)\?([bq])\?([^?]*)\?=/gi, (_, charset, enc, text) => {
      const bytes = enc.toLowerCase() === 'b'
        ? Buffer.from(text, 'base64')
        : Buffer.from(text.replace(/_/g, ' ').replace(/=([0-9a-f]{2})/gi, (m, h) => String.fromCharCode(parseInt(h, 16))), 'latin1');
      return new TextDecoder(charset).decode(bytes);
    });
}

async function main([dir, out]) {
  if (!dir || !out) {
    console.error('usage: node screenshots.mjs PREVIEW_DIR OUT_DIR   (e.g. /tmp/preview docs/mails)');
    return 2;
  }
  const kinds = readdirSync(dir)
    .filter((n) => n.endsWith('.html') && !n.endsWith('.hostile.html'))
    .map((n) => n.slice(0, -'.html'.length));
  if (kinds.length === 0) {
    console.error(`screenshots: no KIND.html in ${dir} (write them with: notifier templates preview --output ${dir})`);
    return 2;
  }
  const described = new Map(SECTIONS.flatMap(([, , ks]) => Object.entries(ks)));
  const unknown = kinds.filter((k) => !described.has(k));
  if (unknown.length) {
    console.error(`screenshots: no description for ${unknown.join(', ')}: add it to SECTIONS in tests/browser/screenshots.mjs`);
    return 1;
  }

  // Old pictures of kinds that no longer exist must not linger.
  mkdirSync(out, { recursive: true });
  for (const n of readdirSync(out)) if (n.endsWith('.png')) rmSync(join(out, n));

  const browser = await launchBrowser();
  try {
    const mail = await newMailPage(browser);
    for (const kind of kinds) {
      await mail.open(join(dir, `${kind}.html`));
      const { requests } = mail.seen();
      if (requests.length) console.error(`screenshots: ${kind} requested ${requests.join(', ')} (blocked)`);
      for (const width of WIDTHS) {
        await mail.page.setViewportSize({ width, height: 800 });
        const png = await mail.page.screenshot({ fullPage: true, animations: 'disabled', caret: 'hide', scale: 'css' });
        const file = join(out, `${kind}-${width}.png`);
        writeFileSync(file, png);
      }
    }
  } finally {
    await browser.close();
  }

  const md = join(dirname(out), `${basename(out)}.md`);
  const rel = relative(dirname(md), out).split('\\').join('/');
  const lines = [
    '# The mails',
    '',
    '<!-- Written by tests/browser/screenshots.mjs; edit that script, not this page. -->',
    '',
    'Every kind of mail the notifier sends, rendered from the sample data',
    '(`templates/samples/`) by `notifier templates preview` and photographed in',
    'Chromium at 600 px (desktop mail clients) and 375 px (a phone). The',
    'templates are in `templates/KIND/`; the shared layout and button in',
    '`templates/partials/`.',
    '',
    'Regenerate after changing a template:',
    '',
    '```sh',
    'cargo build && target/debug/notifier templates preview --output /tmp/preview && node tests/browser/screenshots.mjs /tmp/preview docs/mails',
    '```',
    '',
    '(`npm ci` in `tests/browser` first, and Chromium: Debian package',
    '`chromium`.) The pictures change only when a mail does, given the same',
    'Chromium and fonts.',
    '',
    'The browser check, `tests/browser/run` (in `.ci/run`), loads every mail of',
    'the preview, the sample and the hostile variant (markup, CRLF, U+202E,',
    'zero-width characters and 2,000-character words in every free-text and',
    'name field), at both widths and with all network requests blocked, and',
    'fails when a mail:',
    '',
    '- requests anything (external images, fonts, stylesheets, tracking);',
    '- contains active content (script, frame, form, event handler, `javascript:`);',
    '- lacks `lang="nl"`;',
    '- has not exactly one link, the call-to-action button, to an `https://` address;',
    '- is wider than the viewport (horizontal scrolling);',
    '- cuts text off in a box that clips (`overflow: hidden`);',
    '- splits a word of up to 20 characters over two lines (a squeezed column);',
    '- has visible text with a contrast below 4.5:1 (3:1 for large text).',
    '',
    '`node tests/browser/check.mjs --self-test` proves each of these can fail, on',
    '`tests/browser/fixtures/good.html` and copies of it with one defect each.',
  ];
  const missing = [];
  for (const [title, intro, ks] of SECTIONS) {
    const here = Object.keys(ks).filter((k) => kinds.includes(k));
    missing.push(...Object.keys(ks).filter((k) => !kinds.includes(k)));
    if (here.length === 0) continue;
    lines.push('', `## ${title}`, '', intro);
    for (const kind of here) {
      const subject = subjectOf(join(dir, `${kind}.eml`));
      lines.push('', `### ${kind}`, '', ks[kind]);
      if (subject) lines.push('', `Subject: ${subject.replace(/[\\`*_[\]<>|]/g, '\\$&')}`);
      lines.push(
        '',
        '| 600 px | 375 px |',
        '|---|---|',
        `| ![${kind} at 600 px](${rel}/${kind}-600.png) | ![${kind} at 375 px](${rel}/${kind}-375.png) |`,
      );
    }
  }
  if (missing.length) {
    lines.push('', '## Not in this gallery', '', 'The preview these pictures were taken from had no HTML for:', '');
    for (const k of missing) lines.push(`- \`${k}\``);
    console.error(`screenshots: the preview lacks ${missing.length} kinds: ${missing.join(', ')}`);
  }
  writeFileSync(md, `${lines.join('\n')}\n`);
  console.log(`screenshots: ${kinds.length} kinds at ${WIDTHS.join(' and ')} px in ${out}/, gallery ${md}`);
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    console.error(`screenshots could not run: ${err.message}`);
    process.exit(2);
  },
);
