#!/usr/bin/env node
// bench/sdk.mjs: the real @deno/sandbox SDK (tests/sdk/node_modules) against
// kiln's own CLI, both through the same kilnd, in one run (bench/sdk.sh
// starts kilnd and runs this; make bench-sdk):
//   1. Sandbox.create() -> the first sh`true` returns, against kiln create
//      -> kiln exec ID -- true, interleaved round by round, each sandbox
//      killed after; and both against the 93 ms Deno Sandbox advertises
//   2. sh`true` round trips on one open sandbox against kiln exec ID -- true
//      on the same sandbox
//   3. MiB/s of fs.writeFile/readFile of a 31 MiB buffer and fs.upload/
//      download of a directory of 64 files of 256 KiB, against kiln cp of the
//      same data to and from the same sandbox
// Environment (set by bench/sdk.sh): DENO_SANDBOX_ENDPOINT,
// DENO_DEPLOY_ENDPOINT, DENO_DEPLOY_TOKEN (the SDK's), KILN_ENDPOINT (the
// CLI's: kilnd's unix socket), BENCH_KILN (the kiln CLI), BENCH_TMP (a
// scratch directory); knobs BENCH_SDK_ROUNDS (10), BENCH_SDK_SH (50),
// BENCH_SDK_XFER (rounds of each transfer, 3), BENCH_SDK_MIB (the file's
// size, 31: see BLOB_MIB), BENCH_SDK_TIMEOUT (seconds a
// step may take, 120; 300 in the nested host; the first create, which boots
// kilnd's template, gets 3 times that). Progress goes to stderr, the table to
// stdout. Exit status 1 if a step failed (it is left out of the table and
// listed under it).

import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import fs from "node:fs";
import fsp from "node:fs/promises";
import path from "node:path";
import process from "node:process";
import { fileURLToPath, pathToFileURL } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
// The SDK that tests/sdk installs (make deps-test): its ESM build, as
// tests/sdk/sdk-test.mjs imports it; its own imports (ws, zod) resolve from there.
const SDK_DIR = path.join(ROOT, "tests/sdk/node_modules/@deno/sandbox");
const { Sandbox } = await import(pathToFileURL(path.join(SDK_DIR, "esm/mod.js")).href);
const SDK_VERSION = JSON.parse(fs.readFileSync(path.join(SDK_DIR, "package.json"), "utf8")).version;

const num = (name, dflt) => {
	const v = Math.floor(Number(process.env[name] ?? dflt));
	return Number.isFinite(v) && v > 0 ? v : dflt;
};
const NESTED = process.env.KILN_NESTED_HOST === "1";
const ROUNDS = num("BENCH_SDK_ROUNDS", 10);
const NSH = num("BENCH_SDK_SH", 50);
const NXFER = num("BENCH_SDK_XFER", 3);
const STEP_MS = num("BENCH_SDK_TIMEOUT", NESTED ? 300 : 120) * 1000;
const KILN = process.env.BENCH_KILN;
const TMP = process.env.BENCH_TMP;
const MEM_MIB = 768; // the SDK's smallest; kilnd gives an SDK create its default 2 vCPUs
const VCPUS = 2;
const WARMUP = 1; // rounds of both after the template boot
const SH_WARMUP = 3;
const DENO_MS = 93; // Deno Sandbox's advertised create time
// kilnd's readFile refuses a file from 32 MiB - 240 KiB up (api/kilnd/kd_rpc.c,
// m_read_file: its buffer cannot grow past 32 MiB to see the end of the file),
// so 31 MiB by default.
const BLOB_MIB = num("BENCH_SDK_MIB", 31);
const NFILES = 64;
const FILE_KIB = 256;
const GDIR = "/tmp/bench-sdk"; // in the guest
const T_START = performance.now();

if (!KILN || !TMP || !process.env.DENO_DEPLOY_TOKEN || !process.env.KILN_ENDPOINT) {
	console.error("bench-sdk: run through bench/sdk.sh (BENCH_KILN, BENCH_TMP, DENO_DEPLOY_TOKEN, KILN_ENDPOINT unset)");
	process.exit(2);
}

const log = (m) => process.stderr.write(`bench-sdk: ${m}  [${((performance.now() - T_START) / 1000).toFixed(0)} s]\n`);
const failures = [];
const failed = (what, e) => {
	const msg = `${what}: ${e instanceof Error ? `${e.constructor?.name ?? e.name}: ${e.message}` : String(e)}`
		.replace(/\s*\n\s*/g, " | ").slice(0, 600);
	failures.push(msg);
	log(`FAILED: ${msg}`);
};

function withTimeout(p, ms, what) {
	let t;
	return Promise.race([
		p,
		new Promise((_, rej) => {
			t = setTimeout(() => rej(new Error(`${what} timed out after ${Math.round(ms / 1000)} s`)), ms);
		}),
	]).finally(() => clearTimeout(t));
}

// kiln ARGS...: { ms, out } from the spawn to its exit, or throws with its stderr.
function kiln(args, ms = STEP_MS) {
	return sh([KILN, ...args], ms);
}
function sh(argv, ms = STEP_MS) {
	return new Promise((resolve, reject) => {
		const t0 = performance.now();
		const p = spawn(argv[0], argv.slice(1), { stdio: ["ignore", "pipe", "pipe"] });
		const out = [], err = [];
		p.stdout.on("data", (b) => out.push(b));
		p.stderr.on("data", (b) => err.push(b));
		const timer = setTimeout(() => p.kill("SIGKILL"), ms);
		p.on("error", (e) => {
			clearTimeout(timer);
			reject(e);
		});
		p.on("close", (code, sig) => {
			const t = performance.now() - t0;
			clearTimeout(timer);
			if (code === 0) return resolve({ ms: t, out: Buffer.concat(out).toString() });
			const why = sig === "SIGKILL" ? `killed after ${Math.round(ms / 1000)} s` : sig ? `signal ${sig}` : `exit ${code}`;
			reject(new Error(`${path.basename(argv[0])} ${argv.slice(1).join(" ").slice(0, 200)}: ${why}: ${Buffer.concat(err).toString().trim().slice(-400)}`));
		});
	});
}

// ---- sandboxes alive: every one is killed on the way out -----------------------
const live = new Map(); // id -> Sandbox object (SDK) or null (CLI)

async function sdkCreate(opts, ms = STEP_MS) {
	const p = Sandbox.create({ memory: `${MEM_MIB}MiB`, ...opts });
	p.then((sb) => live.set(sb.id, sb), () => {}); // registered even when we gave up waiting
	return await withTimeout(p, ms, "Sandbox.create()");
}
async function sdkKill(sb) {
	const t0 = performance.now();
	await withTimeout(sb.kill(), STEP_MS, `kill() of ${sb.id}`);
	const t = performance.now() - t0;
	live.delete(sb.id);
	return t;
}
async function cliCreate(ms = STEP_MS) {
	const r = await kiln(["create", "--memory", String(MEM_MIB), "--vcpus", String(VCPUS), "--timeout", "30m"], ms);
	const id = r.out.trim();
	if (!/^sbx_/.test(id)) throw new Error(`kiln create printed ${JSON.stringify(r.out.slice(0, 200))}`);
	live.set(id, null);
	return { id, ms: r.ms };
}
async function cliKill(id) {
	const r = await kiln(["kill", id]);
	live.delete(id);
	return r.ms;
}
async function cleanup() {
	for (const [id, sb] of live) {
		try {
			if (sb) {
				await withTimeout(sb.kill(), 30_000, `kill() of ${id}`);
			} else {
				await kiln(["kill", id], 30_000);
			}
			live.delete(id);
		} catch (e) {
			log(`cleanup: ${id}: ${e.message}`); // bench/sdk.sh kills what is left
		}
	}
}

// ---- statistics -------------------------------------------------------------------
const pct = (v, q) => {
	const s = v.filter((x) => x != null).sort((a, b) => a - b);
	if (!s.length) return null;
	return s[Math.min(s.length - 1, Math.max(0, Math.ceil((q * s.length) / 100) - 1))]; // nearest rank
};
const med = (v) => pct(v, 50);
const fmtMs = (v) => (v == null ? "n/a" : v >= 1000 ? `${v.toFixed(0)} ms` : `${v.toFixed(1)} ms`);
const fmtRate = (v) => (v == null ? "n/a" : `${v.toFixed(1)} MiB/s`);
const ratio = (a, b) => (a != null && b ? (a / b).toFixed(2) : "n/a");
const pad = (s, n) => String(s).padEnd(n);
const lpad = (s, n) => String(s).padStart(n);
const row = (label, stat, a, b, f) =>
	console.log(`${pad(label, 50)} ${pad(stat, 4)} ${lpad(a == null && b != null ? "" : f(a), 13)} ${lpad(b == null && a != null ? "" : f(b), 13)} ${lpad(a != null && b != null ? ratio(a, b) : "", 8)}`);
const head = (a, b, r) => console.log(`${pad("metric", 50)} ${pad("", 4)} ${lpad(a, 13)} ${lpad(b, 13)} ${lpad(r, 8)}`);

// ---- the run ----------------------------------------------------------------------
const lat = { sdk: [], cli: [] }; // section 1: { total, create, first, kill }
const rt = { sdk: [], cli: [], bash: [] }; // section 2
const xfer = { wf: [], rf: [], cpUp: [], cpDown: [], up: [], down: [], dirCpUp: [], dirCpDown: [], tarUp: [], tarDown: [] };
let templateMs = null;
let verified = [];

// One create -> first `true` -> kill through each; null where it failed.
async function roundSdk(tag) {
	let sb;
	try {
		const t0 = performance.now();
		sb = await sdkCreate({});
		const t1 = performance.now();
		await withTimeout(sb.sh`true`, STEP_MS, "sh`true`");
		const t2 = performance.now();
		const killMs = await sdkKill(sb);
		return { total: t2 - t0, create: t1 - t0, first: t2 - t1, kill: killMs };
	} catch (e) {
		failed(`${tag}: Sandbox.create() -> sh\`true\``, e);
		return null;
	}
}
async function roundCli(tag) {
	try {
		const t0 = performance.now();
		const { id } = await cliCreate();
		const t1 = performance.now();
		await kiln(["exec", id, "--", "true"]);
		const t2 = performance.now();
		const killMs = await cliKill(id);
		return { total: t2 - t0, create: t1 - t0, first: t2 - t1, kill: killMs };
	} catch (e) {
		failed(`${tag}: kiln create -> kiln exec ID -- true`, e);
		return null;
	}
}

async function section1() {
	// The first create boots kilnd's template for (debian, 768 MiB, 2 vCPUs): left out.
	log(`the first create boots kilnd's template of the Debian image (${MEM_MIB} MiB, ${VCPUS} vCPUs); may take minutes`);
	try {
		// Sandbox.create() resolves once kilnd admits the sandbox; its VM is
		// restored (here: the template booted) behind it, and the first call waits.
		const t0 = performance.now();
		const sb = await sdkCreate({}, 3 * STEP_MS);
		await withTimeout(sb.sh`true`, 3 * STEP_MS, "the first sh`true`");
		templateMs = performance.now() - t0;
		await sdkKill(sb);
		log(`template ready: the first Sandbox.create() -> sh\`true\` took ${(templateMs / 1000).toFixed(1)} s (left out)`);
	} catch (e) {
		failed("the first create (the template boot)", e);
		return false;
	}
	for (let i = 0; i < WARMUP; i++) {
		log(`warm-up ${i + 1}/${WARMUP}`);
		await roundSdk("warm-up");
		await roundCli("warm-up");
	}
	for (let i = 0; i < ROUNDS; i++) {
		// Interleaved, the order swapped each round so neither always goes first.
		const order = i % 2 ? ["cli", "sdk"] : ["sdk", "cli"];
		for (const k of order) {
			const r = k === "sdk" ? await roundSdk(`round ${i + 1}`) : await roundCli(`round ${i + 1}`);
			if (r) lat[k].push(r);
		}
		const last = (k) => lat[k].at(-1)?.total;
		log(`1. round ${i + 1}/${ROUNDS}: SDK ${fmtMs(last("sdk"))}, CLI ${fmtMs(last("cli"))}`);
	}
	return true;
}

async function section2(sb) {
	for (let i = 0; i < SH_WARMUP; i++) {
		await withTimeout(sb.sh`true`, STEP_MS, "sh`true`");
		await kiln(["exec", sb.id, "--", "true"]);
	}
	for (let i = 0; i < NSH; i++) {
		const order = i % 2 ? ["cli", "bash", "sdk"] : ["sdk", "cli", "bash"];
		for (const k of order) {
			try {
				if (k === "sdk") {
					const t0 = performance.now();
					await withTimeout(sb.sh`true`, STEP_MS, "sh`true`");
					rt.sdk.push(performance.now() - t0);
				} else if (k === "cli") {
					rt.cli.push((await kiln(["exec", sb.id, "--", "true"])).ms);
				} else {
					rt.bash.push((await kiln(["exec", sb.id, "--", "bash", "-c", "true"])).ms);
				}
			} catch (e) {
				failed(`2. run ${i + 1}: ${k}`, e);
			}
		}
		if ((i + 1) % 10 === 0 || i + 1 === NSH) log(`2. ${i + 1}/${NSH} round trips`);
	}
}

const sha = (b) => createHash("sha256").update(b).digest("hex");
const mib = (bytes, ms) => bytes / (1 << 20) / (ms / 1000);
async function timed(key, bytes, fn, what) {
	try {
		const t0 = performance.now();
		await fn();
		xfer[key].push(mib(bytes, performance.now() - t0));
	} catch (e) {
		failed(what, e);
	}
}
async function dirHashes(dir) {
	const m = new Map();
	for (const f of await fsp.readdir(dir)) m.set(f, sha(await fsp.readFile(path.join(dir, f))));
	return m;
}
const sameMap = (a, b) => a.size === b.size && [...a].every(([k, v]) => b.get(k) === v);

async function section3(sb) {
	const blob = randomBytes(BLOB_MIB * (1 << 20));
	const blobSum = sha(blob);
	const local = path.join(TMP, "blob");
	await fsp.writeFile(local, blob);
	const dirName = "tree";
	const srcDir = path.join(TMP, "src", dirName);
	await fsp.mkdir(srcDir, { recursive: true });
	const names = [];
	for (let i = 0; i < NFILES; i++) {
		const n = `f${String(i).padStart(3, "0")}.bin`;
		names.push(n);
		await fsp.writeFile(path.join(srcDir, n), randomBytes(FILE_KIB << 10));
	}
	const srcSums = await dirHashes(srcDir);
	const dirBytes = NFILES * (FILE_KIB << 10);
	await kiln(["rm", sb.id, "-r", GDIR]).catch(() => {});
	await withTimeout(sb.sh`mkdir -p ${GDIR}`, STEP_MS, "mkdir in the guest"); // the user's: both may write in it

	for (let i = 0; i < NXFER; i++) {
		const check = i === 0; // the first round also checks what arrived (outside the timing)
		const tag = `3. round ${i + 1}`;
		const sdkFirst = i % 2 === 0;
		// -- one 32 MiB file
		const gsdk = `${GDIR}/blob-sdk`, gcli = `${GDIR}/blob-cli`, back = path.join(TMP, "blob.back");
		const up = [
			() => timed("wf", blob.length, () => withTimeout(sb.fs.writeFile(gsdk, blob), STEP_MS, "fs.writeFile"), `${tag}: fs.writeFile`),
			() => timed("cpUp", blob.length, () => kiln(["cp", sb.id, local, `guest:${gcli}`]), `${tag}: kiln cp up`),
		];
		for (const f of sdkFirst ? up : up.reverse()) await f();
		let got = null;
		await fsp.rm(back, { force: true });
		const down = [
			() => timed("rf", blob.length, async () => {
				got = await withTimeout(sb.fs.readFile(gsdk), STEP_MS, "fs.readFile");
			}, `${tag}: fs.readFile`),
			() => timed("cpDown", blob.length, () => kiln(["cp", sb.id, `guest:${gcli}`, back]), `${tag}: kiln cp down`),
		];
		for (const f of sdkFirst ? down : down.reverse()) await f();
		if (check) {
			try {
				const g = await withTimeout(sb.sh`sha256sum ${gsdk} ${gcli}`.text(), STEP_MS, "sha256sum");
				const both = (g.match(/^[0-9a-f]{64}/gm) ?? []).every((s) => s === blobSum) && g.match(/^[0-9a-f]{64}/gm)?.length === 2;
				if (!both) throw new Error(`the guest's sha256sum of the uploads: ${g.trim()}, wanted ${blobSum}`);
				if (!got || sha(got) !== blobSum) throw new Error(`fs.readFile gave ${got?.length} bytes that differ`);
				if (sha(await fsp.readFile(back)) !== blobSum) throw new Error("kiln cp's download differs");
				verified.push(`${BLOB_MIB} MiB file`);
			} catch (e) {
				failed(`${tag}: the file's bytes`, e);
			}
		}
		got = null;
		// -- a directory of NFILES files
		const gup = `${GDIR}/up${i}`, gcp = `${GDIR}/cp${i}/${dirName}`;
		const dSdk = path.join(TMP, `dl-sdk${i}`), dCli = path.join(TMP, `dl-cli${i}`, dirName);
		await fsp.mkdir(dSdk, { recursive: true });
		await withTimeout(sb.sh`mkdir -p ${gup}`, STEP_MS, "mkdir in the guest");
		const dup = [
			// upload makes gup/tree, as the SDK's directory upload does
			() => timed("up", dirBytes, () => withTimeout(sb.fs.upload(srcDir, gup), STEP_MS, "fs.upload"), `${tag}: fs.upload`),
			() => timed("dirCpUp", dirBytes, async () => {
				await kiln(["mkdir", sb.id, "-p", gcp]);
				for (const n of names) await kiln(["cp", sb.id, path.join(srcDir, n), `guest:${gcp}/${n}`]);
			}, `${tag}: kiln mkdir + kiln cp of each file up`),
		];
		for (const f of sdkFirst ? dup : dup.reverse()) await f();
		const ddown = [
			// download makes dSdk/tree
			() => timed("down", dirBytes, () => withTimeout(sb.fs.download(`${gup}/${dirName}`, dSdk), STEP_MS, "fs.download"), `${tag}: fs.download`),
			() => timed("dirCpDown", dirBytes, async () => {
				const w = await kiln(["walk", sb.id, "--max-depth", "1", gcp]);
				const files = w.out.split("\n").filter((l) => l && !l.endsWith("/"));
				await fsp.mkdir(dCli, { recursive: true });
				for (const f of files) await kiln(["cp", sb.id, `guest:${f}`, path.join(dCli, path.basename(f))]);
			}, `${tag}: kiln walk + kiln cp of each file down`),
		];
		for (const f of sdkFirst ? ddown : ddown.reverse()) await f();
		if (check) {
			try {
				if (!sameMap(await dirHashes(path.join(dSdk, dirName)), srcSums)) throw new Error("fs.upload + fs.download: the files differ");
				if (!sameMap(await dirHashes(dCli), srcSums)) throw new Error("kiln cp up + down: the files differ");
				verified.push(`${NFILES} files`);
			} catch (e) {
				failed(`${tag}: the directory's bytes`, e);
			}
		}
		// -- (info) the same directory through tar and one kiln exec each way
		const gtar = `${GDIR}/tar${i}`, dTar = path.join(TMP, `dl-tar${i}`);
		await fsp.mkdir(dTar, { recursive: true });
		await timed("tarUp", dirBytes, () => sh(["sh", "-c", 'tar cf - -C "$1" "$2" | "$3" exec "$4" -- sh -c \'mkdir -p "$1" && tar xf - -C "$1"\' sh "$5"',
			"sh", path.dirname(srcDir), dirName, KILN, sb.id, gtar]), `${tag}: tar | kiln exec tar x`);
		await timed("tarDown", dirBytes, () => sh(["sh", "-c", '"$1" exec "$2" -- tar cf - -C "$3" "$4" | tar xf - -C "$5"',
			"sh", KILN, sb.id, gtar, dirName, dTar]), `${tag}: kiln exec tar c | tar x`);
		// Clean up between rounds (untimed), with kiln rm: it is root's, as kiln cp
		// and kiln mkdir are, while commands (sh, kiln exec) run as the image's user.
		for (const d of [gup, `${GDIR}/cp${i}`, gtar]) await kiln(["rm", sb.id, "-r", d]).catch(() => {});
		await Promise.all([dSdk, path.dirname(dCli), dTar].map((d) => fsp.rm(d, { recursive: true, force: true })));
		log(`3. round ${i + 1}/${NXFER}: file up SDK ${fmtRate(xfer.wf.at(-1))} CLI ${fmtRate(xfer.cpUp.at(-1))}, ` +
			`down SDK ${fmtRate(xfer.rf.at(-1))} CLI ${fmtRate(xfer.cpDown.at(-1))}; dir up SDK ${fmtRate(xfer.up.at(-1))} ` +
			`CLI ${fmtRate(xfer.dirCpUp.at(-1))}, down SDK ${fmtRate(xfer.down.at(-1))} CLI ${fmtRate(xfer.dirCpDown.at(-1))}`);
	}
}

let shared = null;
const stop = (sig) => {
	log(`${sig}: stopping`);
	cleanup().finally(() => process.exit(128 + (sig === "SIGINT" ? 2 : sig === "SIGHUP" ? 1 : 15)));
};
for (const s of ["SIGTERM", "SIGINT", "SIGHUP"]) process.on(s, () => stop(s));

try {
	log(`@deno/sandbox ${SDK_VERSION} (Node ${process.version}) against ${KILN}; ${ROUNDS} rounds, ${NSH} round trips, ${NXFER} transfer rounds`);
	if (await section1()) {
		log("2./3. one open sandbox for both (made with Sandbox.create, 30m)");
		try {
			shared = await sdkCreate({ timeout: "30m" });
		} catch (e) {
			failed("2./3.: Sandbox.create() of the shared sandbox", e);
		}
		if (shared) {
			try {
				await section2(shared);
			} catch (e) {
				failed("2.", e);
			}
			try {
				await section3(shared);
			} catch (e) {
				failed("3.", e);
			}
		}
	}
} finally {
	await cleanup();
}

// ---- the table ----------------------------------------------------------------------
const col = (k, f) => lat[k].map((x) => x[f]);
const total = (performance.now() - T_START) / 1000;
console.log(`@deno/sandbox ${SDK_VERSION} (Node ${process.version}) against kiln's CLI, both through the same kilnd, same run`);
console.log(`sandboxes: debian, ${MEM_MIB} MiB, ${VCPUS} vCPUs (SDK: memory "${MEM_MIB}MiB" and kilnd's default vCPUs; ` +
	`CLI: kiln create --memory ${MEM_MIB} --vcpus ${VCPUS})`);
console.log(`SDK: Sandbox.create() (a session sandbox), sh\`true\`, sandbox.kill(); CLI: kiln create, kiln exec ID -- true, kiln kill ID`);
console.log(`  (each kiln a new process, KILN_ENDPOINT=kilnd's unix socket; the SDK over TCP with a token)`);
console.log(`the first create, which boots kilnd's template, is left out (${templateMs == null ? "n/a" : `${(templateMs / 1000).toFixed(1)} s`}); ` +
	`then ${WARMUP} warm-up round; p99 is nearest rank (the max below 100 rounds)`);
if (NESTED) console.log("NESTED TCG host: every time below is many times (~20-50x) a real KVM host's; read the ratios");
console.log();
console.log(`1. create -> first \`true\` returns, ${lat.sdk.length}+${lat.cli.length} of ${ROUNDS} rounds each, interleaved, each sandbox killed after`);
head("@deno/sandbox", "kiln CLI", "sdk/cli");
row("create -> first true returns", "p50", med(col("sdk", "total")), med(col("cli", "total")), fmtMs);
row("", "p99", pct(col("sdk", "total"), 99), pct(col("cli", "total"), 99), fmtMs);
row("  of which the create (resolved* / exited)", "p50", med(col("sdk", "create")), med(col("cli", "create")), fmtMs);
row("  and the first true (sh* / kiln exec)", "p50", med(col("sdk", "first")), med(col("cli", "first")), fmtMs);
row("kill (kill() / kiln kill, info)", "p50", med(col("sdk", "kill")), med(col("cli", "kill")), fmtMs);
console.log("  * Sandbox.create() resolves once kilnd admits the sandbox and opens its socket; the restore");
console.log("    runs behind it and the first call waits for it, so only the whole create -> first true");
console.log("    compares; kiln create returns once the sandbox runs (its agent has its identity)");
console.log(`against the ${DENO_MS} ms Deno Sandbox advertises for a create (information only${NESTED ? "; meaningless under nesting" : ""})`);
console.log(`${pad("", 50)} ${pad("", 4)} ${lpad("time", 13)} ${lpad("x 93 ms", 13)} ${lpad("<= 93 ms", 8)}`);
for (const [label, v] of [["Sandbox.create() (resolves before the VM runs*)", med(col("sdk", "create"))],
	["Sandbox.create() -> first sh`true`", med(col("sdk", "total"))],
	["kiln create", med(col("cli", "create"))],
	["kiln create -> kiln exec true", med(col("cli", "total"))]]) {
	console.log(`${pad(label, 50)} ${pad("p50", 4)} ${lpad(fmtMs(v), 13)} ${lpad(v == null ? "n/a" : (v / DENO_MS).toFixed(2), 13)} ${lpad(v == null ? "n/a" : v <= DENO_MS ? "PASS" : "MISS", 8)}`);
}
if (NESTED) {
	console.log("  the nested host runs KVM inside QEMU's TCG emulator, ~20-50x slower than real KVM: these");
	console.log("  MISSes say nothing about a real host; run make bench-sdk on one with /dev/kvm for them");
}
console.log();
console.log(`2. exec round trip on one open sandbox, ${rt.sdk.length}/${rt.cli.length} of ${NSH} each, interleaved, after ${SH_WARMUP} warm-up`);
head("@deno/sandbox", "kiln CLI", "sdk/cli");
row("sh`true` / kiln exec ID -- true", "p50", med(rt.sdk), med(rt.cli), fmtMs);
row("", "p99", pct(rt.sdk, 99), pct(rt.cli, 99), fmtMs);
row("sh`true` / kiln exec ID -- bash -c true", "p50", med(rt.sdk), med(rt.bash), fmtMs);
row("  (sh runs bash -c in the guest)", "p99", pct(rt.sdk, 99), pct(rt.bash, 99), fmtMs);
console.log();
console.log(`3. throughput on the same sandbox, median of ${NXFER} (higher is better)`);
head("@deno/sandbox", "kiln CLI", "sdk/cli");
row(`${BLOB_MIB} MiB file up: fs.writeFile / kiln cp`, "", med(xfer.wf), med(xfer.cpUp), fmtRate);
row(`${BLOB_MIB} MiB file down: fs.readFile / kiln cp`, "", med(xfer.rf), med(xfer.cpDown), fmtRate);
row(`${NFILES} x ${FILE_KIB} KiB dir up: fs.upload / kiln cp each`, "", med(xfer.up), med(xfer.dirCpUp), fmtRate);
row(`  down: fs.download / kiln walk + kiln cp each`, "", med(xfer.down), med(xfer.dirCpDown), fmtRate);
row("  (info) up: fs.upload / tar | kiln exec tar x", "", med(xfer.up), med(xfer.tarUp), fmtRate);
row("  (info) down: fs.download / kiln exec tar c | tar", "", med(xfer.down), med(xfer.tarDown), fmtRate);
console.log(`  kiln cp each = one kiln process per file (and kiln mkdir -p / kiln walk first); bytes checked: ${verified.join(", ") || "none"}`);
console.log();
console.log(`run took ${total.toFixed(0)} s`);
if (failures.length) {
	console.log(`FAILED: ${failures.length} step(s) (left out above):`);
	for (const f of failures) console.log(`  ${f}`);
}
process.exit(failures.length ? 1 : 0);
