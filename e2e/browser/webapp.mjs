// The web page in a real browser: Debian's chromium driven by playwright-core
// (which never downloads a browser). Signs in (by keyboard), uploads with
// observed progress, watches a conversion, downloads the MP3, sees a failure,
// cancels an upload, checks the phone layout, the CSP and the console, and
// signs out. One line per step with its duration; exit code 0 on success.
//
// Inputs (env): BASE_URL EMAIL PASSWORD VIDEO_A VIDEO_B VIDEO_LONG VIDEO_BIG VIDEO_RESUME VIDEO_RELOAD
// NOT_A_VIDEO DOWNLOAD_DIR SCREENSHOT_DIR, optionally CHROMIUM (the binary).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { chromium } from 'playwright-core';

// ---- Inputs ------------------------------------------------------------------

function env(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`FAIL: environment variable ${name} is not set`);
    process.exit(2);
  }
  return value;
}

const BASE_URL = env('BASE_URL').replace(/\/+$/, '');
const EMAIL = env('EMAIL');
const PASSWORD = env('PASSWORD');
const VIDEO_A = env('VIDEO_A');
const VIDEO_B = env('VIDEO_B');
const VIDEO_LONG = env('VIDEO_LONG');
const VIDEO_BIG = env('VIDEO_BIG');
const VIDEO_RESUME = env('VIDEO_RESUME');
const VIDEO_RELOAD = env('VIDEO_RELOAD');
const NOT_A_VIDEO = env('NOT_A_VIDEO');
const DOWNLOAD_DIR = env('DOWNLOAD_DIR');
const SCREENSHOT_DIR = env('SCREENSHOT_DIR');

for (const file of [VIDEO_A, VIDEO_B, VIDEO_LONG, VIDEO_BIG, VIDEO_RESUME, VIDEO_RELOAD, NOT_A_VIDEO]) {
  if (!fs.existsSync(file)) {
    console.error(`FAIL: input file ${file} does not exist`);
    process.exit(2);
  }
}
fs.mkdirSync(DOWNLOAD_DIR, { recursive: true });
fs.mkdirSync(SCREENSHOT_DIR, { recursive: true });

const names = [VIDEO_A, VIDEO_B, VIDEO_LONG, VIDEO_BIG, VIDEO_RESUME, VIDEO_RELOAD, NOT_A_VIDEO].map((f) => path.basename(f));
if (new Set(names).size !== names.length) {
  console.error(`FAIL: the input files need distinct names, got ${names.join(', ')}`);
  process.exit(2);
}

// The whole run has a hard ceiling, whatever hangs.
const RUN_LIMIT_MS = 180_000;
setTimeout(() => {
  console.error(`FAIL: the run exceeded ${RUN_LIMIT_MS / 1000} s`);
  process.exit(1);
}, RUN_LIMIT_MS).unref();

// ---- Helpers -----------------------------------------------------------------

const runStart = performance.now();
let passed = 0;

async function step(name, fn) {
  const t0 = performance.now();
  try {
    await fn();
  } catch (err) {
    console.log(`FAIL ${name} (${Math.round(performance.now() - t0)} ms)`);
    throw err;
  }
  passed += 1;
  console.log(`ok   ${name} (${Math.round(performance.now() - t0)} ms)`);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `probe` until it returns a truthy value; fails with `what` after `timeout` ms. */
async function waitFor(what, probe, { timeout = 15_000, interval = 50 } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    last = await probe();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await sleep(interval);
  }
}

/** "holiday.mkv" → "holiday.mp3", as the page names downloads. */
function mp3Name(file) {
  const base = path.basename(file);
  const dot = base.lastIndexOf('.');
  return `${dot > 0 ? base.slice(0, dot) : base}.mp3`;
}

const shot = (page, name) => page.screenshot({ path: path.join(SCREENSHOT_DIR, name), fullPage: false });

// ---- Browser -----------------------------------------------------------------

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-dev-shm-usage',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
    '--disable-quic',
  ],
});
const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 900 } });
const page = await context.newPage();
page.setDefaultTimeout(15_000);

// Everything the page says on the console as an error, and uncaught errors.
// The browser's own "Failed to load resource … 401" lines are expected: this
// run provokes 401s on purpose (wrong password, revoked token).
const consoleErrors = [];
let tolerateUploadRefusal = false; // a server may refuse a file name with markup in it
let offlineOnPurpose = false; // requests fail while this run takes the network away
page.on('console', (msg) => {
  if (msg.type() !== 'error') return;
  if (/^Failed to load resource: the server responded with a status of 401\b/.test(msg.text())) return;
  if (tolerateUploadRefusal && /status of 4\d\d\b/.test(msg.text()) && /\/uploads?(\/[0-9a-f]{24})?$/.test(msg.location().url)) return;
  if (offlineOnPurpose && /net::ERR_INTERNET_DISCONNECTED/.test(msg.text())) return;
  consoleErrors.push(`console: ${msg.text()}`);
});
page.on('pageerror', (err) => consoleErrors.push(`page error: ${err.message}`));

// Dialogs: confirm() is expected only where this script says so; anything
// else (an alert() from injected markup above all) is a failure.
let expectConfirm = false;
const unexpectedDialogs = [];
let expectLeave = false; // a reload with an upload in flight asks first
page.on('dialog', async (dialog) => {
  if (expectConfirm && dialog.type() === 'confirm') {
    expectConfirm = false;
    await dialog.accept();
  } else if (expectLeave && dialog.type() === 'beforeunload') {
    expectLeave = false;
    await dialog.accept();
  } else {
    unexpectedDialogs.push(`${dialog.type()}: ${dialog.message()}`);
    await dialog.dismiss();
  }
});

// Every value any <progress> takes, recorded in the page as it happens, so a
// value shown for a moment between two polls is not missed.
await page.addInitScript(() => {
  window.__progress = [];
  const record = (el) => {
    if (el.tagName !== 'PROGRESS') return;
    window.__progress.push({ label: el.getAttribute('aria-label') || '', value: el.hasAttribute('value') ? el.value : null });
  };
  new MutationObserver((mutations) => {
    for (const m of mutations) {
      if (m.type === 'attributes') record(m.target);
      for (const node of m.addedNodes) {
        if (node.nodeType !== 1) continue;
        record(node);
        node.querySelectorAll('progress').forEach(record);
      }
    }
  }).observe(document, { subtree: true, childList: true, attributes: true, attributeFilter: ['value'] });
});
const progressValues = (label) => page.evaluate((l) => window.__progress.filter((p) => p.label === l).map((p) => p.value), label);

const cdp = await context.newCDPSession(page);
await cdp.send('Network.enable');
async function throttleUpload(bytesPerSecond) {
  await cdp.send('Network.emulateNetworkConditions', {
    offline: false,
    latency: 0,
    downloadThroughput: -1,
    uploadThroughput: bytesPerSecond,
  });
}
const unthrottle = () => throttleUpload(-1);
/** The network goes away (or comes back) for the page: navigator.onLine and
 * its events (context.setOffline), and our CDP session's conditions too, which
 * would otherwise keep the throttled network up. */
async function setOffline(offline) {
  await context.setOffline(offline);
  await cdp.send('Network.emulateNetworkConditions', { offline, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
}

// What a person sees, by accessible role and name.
const jobsList = () => page.getByRole('list', { name: 'Your conversions' });
const uploadsList = () => page.getByRole('list', { name: 'Uploads' });
// Jobs already there before this run (a re-run against `scripts/dev up`
// finds the previous run's jobs with the same file names): never matched.
let knownJobIds = new Set();
/** The row of the job of this run named `name`, as a Locator (it may not exist yet). */
const jobRow = (name) => {
  const known = [...knownJobIds].map((id) => `:not([data-job-id=${JSON.stringify(id)}])`).join('');
  return jobsList().locator(`li[data-job-id]${known}`).filter({ has: page.getByText(name, { exact: true }) });
};
const uploadRow = (name) => uploadsList().getByRole('listitem').filter({ has: page.getByText(name, { exact: true }) });
const signInHeading = () => page.getByRole('heading', { name: 'Sign in' });

/** The job's visible state: badge text, percent text, failure text. */
async function jobView(name) {
  const row = jobRow(name);
  if ((await row.count()) === 0) return null;
  return row.first().evaluate((li) => {
    const text = (sel) => {
      const el = li.querySelector(sel);
      return el && !el.closest('[hidden]') ? el.textContent.trim() : '';
    };
    return { state: text('.badge'), percent: text('.job-percent'), failure: text('.job-failure') };
  });
}

async function waitForJobState(name, state, timeout) {
  return waitFor(`job "${name}" to show "${state}"`, async () => {
    const v = await jobView(name);
    if (v && v.state === 'Failed' && state !== 'Failed') throw new Error(`job "${name}" failed: ${v.failure}`);
    return v && v.state === state ? v : null;
  }, { timeout });
}

/** Picks files the way a person does: the "Choose videos" button opens the file chooser. */
async function chooseFiles(files) {
  const [chooser] = await Promise.all([
    page.waitForEvent('filechooser', { timeout: 5000 }),
    page.getByRole('button', { name: /Choose videos/ }).click(),
  ]);
  assert.ok(chooser.isMultiple(), 'the file chooser should accept several files');
  await chooser.setFiles(files);
}

/** GET /jobs from inside the page, with the page's own token. */
async function listJobsInPage() {
  const { status, body } = await page.evaluate(async () => {
    const token = JSON.parse(sessionStorage.getItem('mp3converter.session')).token;
    const res = await fetch('/jobs?page_size=100', { headers: { Authorization: `Bearer ${token}` } });
    return { status: res.status, body: await res.json().catch(() => null) };
  });
  assert.equal(status, 200, 'GET /jobs should answer 200');
  assert.ok(body && Array.isArray(body.jobs), `GET /jobs should answer {"jobs": [...]}, got ${JSON.stringify(body)}`);
  return body.jobs;
}

const sessionToken = () => page.evaluate(() => JSON.parse(sessionStorage.getItem('mp3converter.session') || 'null')?.token || null);

// ---- The run -------------------------------------------------------------------

let documentResponse;

async function run() {
  await step('1. open the page, wrong password is refused, sign in by keyboard only', async () => {
    documentResponse = await page.goto(BASE_URL, { waitUntil: 'domcontentloaded' });
    assert.ok(documentResponse && documentResponse.ok(), `GET ${BASE_URL}/ answered ${documentResponse && documentResponse.status()}`);
    await signInHeading().waitFor({ state: 'visible', timeout: 10_000 });
    await page.getByLabel('Email').waitFor({ state: 'visible' });
    await shot(page, 'signin.png');

    // Keyboard only: from nothing focused, Tab to the email field, type,
    // Tab to the password, type, Enter.
    await page.evaluate(() => document.activeElement && document.activeElement.blur());
    await waitFor('Tab to reach the email field', async () => {
      await page.keyboard.press('Tab');
      return page.evaluate(() => document.activeElement && document.activeElement.id === 'email');
    }, { timeout: 5000, interval: 0 });
    await page.keyboard.type(EMAIL);
    await page.keyboard.press('Tab');
    assert.equal(await page.evaluate(() => document.activeElement.id), 'password', 'Tab from Email should reach Password');
    await page.keyboard.type(`${PASSWORD}-wrong`);
    await page.keyboard.press('Enter');
    const refusal = await waitFor('a message after the wrong password', async () => {
      const text = await page.locator('#signin-message').textContent();
      return text && text.trim();
    }, { timeout: 10_000 });
    assert.equal(refusal, 'Wrong email or password.', 'the page should say why signing in failed');
    assert.ok(await page.getByText('Wrong email or password.').isVisible(), 'the refusal should be visible');
    assert.equal(await sessionToken(), null, 'no token may be stored after a wrong password');

    // The page selects the rejected password: typing replaces it.
    await page.getByLabel('Password').focus();
    await page.keyboard.press('ControlOrMeta+A');
    await page.keyboard.type(PASSWORD);
    await page.keyboard.press('Enter');
    await page.getByRole('button', { name: /Choose videos/ }).waitFor({ state: 'visible', timeout: 10_000 });
    await page.getByRole('heading', { name: 'Your conversions' }).waitFor({ state: 'visible' });
    await page.getByRole('button', { name: 'Sign out' }).waitFor({ state: 'visible' });
    assert.ok(await sessionToken(), 'the token should be in sessionStorage');
    const cookies = await context.cookies();
    assert.equal(cookies.length, 0, `the page must not use cookies, found ${cookies.map((c) => c.name)}`);
    assert.ok(!page.url().includes((await sessionToken()).slice(0, 16)), 'the token must never be in the URL');
    knownJobIds = new Set((await listJobsInPage()).map((j) => j.job_id));
  });

  const nameA = path.basename(VIDEO_A);
  const nameB = path.basename(VIDEO_B);
  await step('2. two uploads at once show progress, then both become jobs', async () => {
    // About 3 s for both files, so progress is observable but quick.
    const total = fs.statSync(VIDEO_A).size + fs.statSync(VIDEO_B).size;
    await throttleUpload(Math.max(64 * 1024, Math.round(total / 3)));
    await chooseFiles([VIDEO_A, VIDEO_B]);
    await uploadRow(nameA).waitFor({ state: 'visible', timeout: 5000 });
    await uploadRow(nameB).waitFor({ state: 'visible', timeout: 5000 });
    await shot(page, 'uploading.png');
    for (const name of [nameA, nameB]) {
      await waitFor(`"${name}" to appear in the job list`, async () => (await jobRow(name).count()) === 1, { timeout: 30_000 });
    }
    await unthrottle();
    for (const name of [nameA, nameB]) {
      const values = await progressValues(`Upload progress of ${name}`);
      const between = values.filter((v) => v != null && v > 0 && v < 100);
      assert.ok(between.length > 0, `the upload bar of "${name}" never showed a value strictly between 0 and 100 % (saw ${JSON.stringify(values)})`);
      assert.ok(values.includes(100), `the upload bar of "${name}" never reached 100 % (saw ${JSON.stringify(values)})`);
    }
  });

  const nameLong = path.basename(VIDEO_LONG);
  await step('3. a conversion shows its percentage, then is done', async () => {
    await unthrottle();
    await chooseFiles([VIDEO_LONG]);
    const seen = [];
    let shotTaken = false;
    await waitFor(`"${nameLong}" to be done`, async () => {
      const v = await jobView(nameLong);
      if (!v) return false;
      if (v.state === 'Failed') throw new Error(`"${nameLong}" failed: ${v.failure}`);
      if (v.state === 'Converting') {
        const m = /^(\d+) %$/.exec(v.percent);
        if (m) {
          seen.push(Number(m[1]));
          if (!shotTaken && Number(m[1]) > 0 && Number(m[1]) < 100) {
            shotTaken = true;
            await jobRow(nameLong).evaluate((li) => li.scrollIntoView({ block: 'center' }));
            await shot(page, 'converting.png');
          }
        }
      }
      return v.state === 'Done';
    }, { timeout: 60_000 });
    const between = seen.filter((p) => p > 0 && p < 100);
    assert.ok(between.length > 0, `"${nameLong}" was never seen converting at a percentage strictly between 0 and 100 (saw ${JSON.stringify(seen)})`);
    assert.ok(shotTaken, 'converting.png was not taken');
  });

  await step('4. download the MP3 under the original name with .mp3', async () => {
    const row = jobRow(nameLong);
    const [download] = await Promise.all([
      page.waitForEvent('download', { timeout: 30_000 }),
      row.getByRole('button', { name: /^Download/ }).click(),
    ]);
    const expected = mp3Name(VIDEO_LONG);
    assert.equal(download.suggestedFilename(), expected, 'the download should be named after the video');
    const target = path.join(DOWNLOAD_DIR, expected);
    await download.saveAs(target);
    const bytes = fs.readFileSync(target);
    assert.ok(bytes.length > 1000, `the MP3 is only ${bytes.length} bytes`);
    const id3 = bytes.subarray(0, 3).toString('latin1') === 'ID3';
    const frameSync = bytes[0] === 0xff && (bytes[1] & 0xe0) === 0xe0;
    assert.ok(id3 || frameSync, 'the download does not start like an MP3 (no ID3 tag, no frame sync)');
    console.log(`DOWNLOADED ${target}`);
  });

  const nameBad = path.basename(NOT_A_VIDEO);
  // Same bytes under a name that would run script if it were parsed as HTML.
  const evilName = '<img src=x onerror=alert(1)>.mp4';
  await step('5. a file that is not a video fails with a reason in words; markup in names stays text', async () => {
    await chooseFiles([NOT_A_VIDEO]);
    const v = await waitForJobState(nameBad, 'Failed', 30_000);
    const reason = v.failure.replace(/^Could not convert:?\s*/, '');
    assert.ok(/[a-z]{3,}/i.test(reason), `the failure reason should be words, got "${v.failure}"`);
    assert.ok(!/^[[{]/.test(reason.trim()), `the failure reason should not be raw JSON, got "${v.failure}"`);

    const [chooser] = await Promise.all([
      page.waitForEvent('filechooser'),
      page.getByRole('button', { name: /Choose videos/ }).click(),
    ]);
    tolerateUploadRefusal = true;
    await chooser.setFiles({ name: evilName, mimeType: 'video/mp4', buffer: fs.readFileSync(NOT_A_VIDEO) });
    await uploadRow(evilName).waitFor({ state: 'visible', timeout: 5000 });
    // Settled either way: a job (any state), or a refused upload.
    await waitFor('the upload with a markup file name to settle', async () => {
      const state = await uploadRow(evilName).locator('.badge').textContent().catch(() => 'gone');
      return state !== 'Uploading' && state !== 'Waiting' && state !== 'Finishing';
    });
    await sleep(500);
    tolerateUploadRefusal = false;
    assert.equal(await page.locator('img[src="x"]').count(), 0, 'a file name was inserted as HTML');
  });

  const nameBig = path.basename(VIDEO_BIG);
  await step('6. cancel an upload halfway: the row says cancelled and no job appears', async () => {
    // About 6 s for the whole file, so 25 % comes after ~1.5 s.
    await throttleUpload(Math.max(64 * 1024, Math.round(fs.statSync(VIDEO_BIG).size / 6)));
    await chooseFiles([VIDEO_BIG]);
    const row = uploadRow(nameBig);
    const bar = row.getByRole('progressbar', { name: `Upload progress of ${nameBig}` });
    const atCancel = await waitFor(`the upload of "${nameBig}" to reach 25 %`, async () => {
      const value = await bar.evaluate((p) => p.value).catch(() => null);
      if (value >= 100) throw new Error(`"${nameBig}" finished uploading before it could be cancelled; lower the throttle`);
      return value >= 25 ? value : null;
    }, { timeout: 20_000 });
    const text = await row.locator('.upload-text').textContent();
    assert.match(text, /of .* sent \(\d+ %\)/, `the row should say how much was sent, got "${text}"`);
    await row.getByRole('button', { name: /^Cancel/ }).click();
    await row.getByText('Cancelled', { exact: true }).waitFor({ state: 'visible', timeout: 5000 });
    await unthrottle();
    assert.ok(atCancel < 100);
    await sleep(3000);
    assert.equal(await jobRow(nameBig).count(), 0, `a job for the cancelled "${nameBig}" appeared in the list`);
    const names = (await listJobsInPage()).filter((j) => !knownJobIds.has(j.job_id)).map((j) => j.filename);
    assert.ok(!names.includes(nameBig), `GET /jobs lists the cancelled "${nameBig}": ${JSON.stringify(names)}`);
  });

  const nameResume = path.basename(VIDEO_RESUME);
  await step('6b. the network drops mid-upload: back online, the upload continues where it stopped', async () => {
    const size = fs.statSync(VIDEO_RESUME).size;
    // About 6 s for the whole file, so 30 % comes after ~2 s.
    await throttleUpload(Math.max(64 * 1024, Math.round(size / 6)));
    const offsets = [];
    const onRequest = (r) => {
      if (r.method() === 'PATCH' && r.url().includes('/uploads/')) offsets.push(Number(r.headers()['upload-offset']));
    };
    page.on('request', onRequest);
    await chooseFiles([VIDEO_RESUME]);
    const row = uploadRow(nameResume);
    const bar = row.getByRole('progressbar', { name: `Upload progress of ${nameResume}` });
    const atDrop = await waitFor(`the upload of "${nameResume}" to reach 30 %`, async () => {
      const value = await bar.evaluate((p) => p.value).catch(() => null);
      if (value >= 100) throw new Error(`"${nameResume}" finished uploading before the network dropped; lower the throttle`);
      return value >= 30 ? value : null;
    }, { timeout: 20_000 });
    offlineOnPurpose = true;
    await setOffline(true);
    await row.getByText(/^Offline/).waitFor({ state: 'visible', timeout: 15_000 });
    await shot(page, 'offline.png');
    await sleep(500);
    await setOffline(false);
    offlineOnPurpose = false;
    await waitFor(`"${nameResume}" to appear in the job list`, async () => (await jobRow(nameResume).count()) === 1, { timeout: 30_000 });
    page.off('request', onRequest);
    await unthrottle();
    // It went on from what the server had kept, not from byte 0.
    assert.equal(offsets[0], 0, `the first PATCH starts at 0 (saw ${JSON.stringify(offsets)})`);
    const resumedAt = offsets[offsets.length - 1];
    assert.ok(offsets.length >= 2 && resumedAt > 0, `no PATCH resumed past the start (saw ${JSON.stringify(offsets)})`);
    // And the bar went on from where it was: it never went back.
    const values = (await progressValues(`Upload progress of ${nameResume}`)).filter((v) => v != null);
    const back = values.findIndex((v, i) => i > 0 && v < values[i - 1] - 0.5);
    assert.equal(back, -1, `the bar went back from ${values[back - 1]} % to ${values[back]} % (dropped at ${atDrop} %, resumed at byte ${resumedAt} of ${size})`);
    assert.ok(values.includes(100), `the upload bar of "${nameResume}" never reached 100 %`);
  });

  const nameReload = path.basename(VIDEO_RELOAD);
  await step('6c. a reload mid-upload: the page lists it unfinished, and the file picked again goes on', async () => {
    const size = fs.statSync(VIDEO_RELOAD).size;
    await throttleUpload(Math.max(64 * 1024, Math.round(size / 6)));
    const offsets = [];
    const onRequest = (r) => {
      if (r.method() === 'PATCH' && r.url().includes('/uploads/')) offsets.push(Number(r.headers()['upload-offset']));
    };
    page.on('request', onRequest);
    await chooseFiles([VIDEO_RELOAD]);
    const bar = uploadRow(nameReload).getByRole('progressbar', { name: `Upload progress of ${nameReload}` });
    await waitFor(`the upload of "${nameReload}" to reach 20 %`, async () => {
      const value = await bar.evaluate((p) => p.value).catch(() => null);
      if (value >= 100) throw new Error(`"${nameReload}" finished uploading before the reload; lower the throttle`);
      return value >= 20 ? value : null;
    }, { timeout: 20_000 });
    offlineOnPurpose = true; // the reload cuts the PATCH in flight
    expectLeave = true; // the page asks before it drops an upload in flight
    await page.reload();
    assert.equal(expectLeave, false, 'the page did not ask before leaving an upload in flight');
    await page.getByRole('heading', { name: 'Your conversions' }).waitFor({ state: 'visible', timeout: 10_000 });
    offlineOnPurpose = false;
    const unfinished = page.getByRole('list', { name: 'Unfinished uploads' }).getByRole('listitem');
    await unfinished.filter({ hasText: nameReload }).waitFor({ state: 'visible', timeout: 10_000 });
    await shot(page, 'unfinished.png');
    await chooseFiles([VIDEO_RELOAD]);
    await waitFor(`"${nameReload}" to appear in the job list`, async () => (await jobRow(nameReload).count()) === 1, { timeout: 30_000 });
    page.off('request', onRequest);
    await unthrottle();
    const again = offsets.slice(1);
    assert.ok(again.length > 0 && again[0] > 0, `after the reload the upload started over (PATCH offsets ${JSON.stringify(offsets)})`);
    await waitFor('the unfinished list to empty', async () => (await unfinished.count()) === 0, { timeout: 10_000 });
  });

  await step('7. job list screenshots; no horizontal scrolling at phone width', async () => {
    await waitForJobState(nameA, 'Done', 30_000);
    await waitForJobState(nameB, 'Done', 30_000);
    await page.getByRole('heading', { name: 'Your conversions' }).scrollIntoViewIfNeeded();
    await shot(page, 'jobs.png');
    await page.setViewportSize({ width: 375, height: 812 });
    await sleep(200);
    const { scrollWidth, innerWidth } = await page.evaluate(() => ({
      scrollWidth: document.documentElement.scrollWidth,
      innerWidth: window.innerWidth,
    }));
    assert.ok(scrollWidth <= innerWidth, `at 375 px the page scrolls sideways (scrollWidth ${scrollWidth} > ${innerWidth})`);
    await page.getByRole('heading', { name: 'Your conversions' }).evaluate((h) => h.scrollIntoView({ block: 'start' }));
    await shot(page, 'mobile.png');
    await page.setViewportSize({ width: 1280, height: 900 });
  });

  await step('8. delete a job after confirming', async () => {
    const row = jobRow(nameBad);
    expectConfirm = true;
    await row.getByRole('button', { name: /^Delete/ }).click();
    await row.waitFor({ state: 'detached', timeout: 10_000 });
    assert.equal(expectConfirm, false, 'Delete should ask for confirmation first');
  });

  await step('9. sign out: back to sign-in, and the old token is refused', async () => {
    const token = await sessionToken();
    await page.getByRole('button', { name: 'Sign out' }).click();
    await signInHeading().waitFor({ state: 'visible', timeout: 10_000 });
    assert.equal(await sessionToken(), null, 'the token should be gone from sessionStorage');
    const status = await page.evaluate(async (t) => {
      const res = await fetch('/jobs?page_size=100', { headers: { Authorization: `Bearer ${t}` } });
      return res.status;
    }, token);
    assert.equal(status, 401, 'the token should stop working after sign-out');
  });

  await step('10. CSP header present; no console errors, CSP violations or dialogs', async () => {
    const csp = documentResponse.headers()['content-security-policy'] || '';
    assert.ok(csp.includes("script-src 'self'"), `the page's Content-Security-Policy should contain script-src 'self', got "${csp}"`);
    assert.deepEqual(consoleErrors, [], 'the page logged errors');
    assert.deepEqual(unexpectedDialogs, [], 'unexpected dialogs appeared');
  });
}

let failed = false;
try {
  await run();
} catch (err) {
  failed = true;
  console.log(`\n${err.stack || err}`);
  if (consoleErrors.length) console.log(`console errors so far:\n  ${consoleErrors.join('\n  ')}`);
  await page.screenshot({ path: path.join(SCREENSHOT_DIR, 'failure.png'), fullPage: true }).catch(() => {});
  console.log(`screenshot of the failure: ${path.join(SCREENSHOT_DIR, 'failure.png')}`);
} finally {
  await browser.close().catch(() => {});
}
console.log(`\nbrowser run took ${((performance.now() - runStart) / 1000).toFixed(1)} s`);
console.log(`${passed} passed, ${failed ? 1 : 0} failed`);
process.exit(failed ? 1 : 0);
