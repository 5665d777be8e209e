// firstkey: the in-browser verifier of audit exports (docs/audit-log.md). The browser checks, by
// itself, with WebCrypto only (SHA-256, Ed25519): the checkpoint's signature by the log key the
// reader gives (the C2SP signed-note verifier key), that every entry is inside that signed tree
// (RFC 9162 §2.1.3.2 inclusion proofs, or, for a complete export, the root recomputed from every
// leaf), that indexes increase and equal each entry's `seq`, and that all entries are of one
// municipality. Nothing is sent anywhere. The same checks as `firstkey audit verify`
// (src/audit/verify.rs); tree sizes and roots are taken only from the verified checkpoint.
//
// `verifyExport(text, keyText)` is the whole verifier (no DOM; also runs under Node for the tests);
// the rest wires the page's form (`form[data-verifier]`).
(function (root) {
  "use strict";

  const FORMAT = "firstkey-audit-export/v1";
  const SIG_ED25519 = 0x01;
  const DASH = "\u2014";
  const enc = new TextEncoder();

  function subtle() {
    const c = root.crypto || (typeof globalThis !== "undefined" ? globalThis.crypto : undefined);
    if (!c || !c.subtle) throw new Error("this browser has no WebCrypto (it needs a secure origin)");
    return c.subtle;
  }

  function b64(text) {
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 !== 0) throw new Error("not base64");
    const bin = atob(text);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  function hex(bytes) {
    return Array.from(bytes, function (b) { return b.toString(16).padStart(2, "0"); }).join("");
  }

  function concat() {
    let n = 0;
    for (const a of arguments) n += a.length;
    const out = new Uint8Array(n);
    let at = 0;
    for (const a of arguments) { out.set(a, at); at += a.length; }
    return out;
  }

  function equal(a, b) {
    if (a.length !== b.length) return false;
    let d = 0;
    for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
    return d === 0;
  }

  async function sha256(bytes) {
    return new Uint8Array(await subtle().digest("SHA-256", bytes));
  }

  function leafHash(data) { return sha256(concat(Uint8Array.of(0), enc.encode(data))); }
  function nodeHash(l, r) { return sha256(concat(Uint8Array.of(1), l, r)); }

  // <name>+<hex key id>+<base64(0x01 ‖ 32-byte key)>; the id must be SHA-256(name ‖ \n ‖ key)[:4].
  async function parseKey(text) {
    const parts = text.trim().split("+");
    if (parts.length < 3) throw new Error("the log key must be <name>+<hash>+<key>");
    const name = parts[0];
    const idHex = parts[1].toLowerCase();
    const key = b64(parts.slice(2).join("+"));
    if (key.length !== 33 || key[0] !== SIG_ED25519) throw new Error("the log key is not an Ed25519 note key");
    const id = (await sha256(concat(enc.encode(name), Uint8Array.of(0x0a), key))).slice(0, 4);
    if (hex(id) !== idHex) throw new Error("the log key's hash does not match its name and key");
    const cryptoKey = await subtle().importKey("raw", key.slice(1), { name: "Ed25519" }, false, ["verify"]);
    return { name: name, id: id, key: cryptoKey };
  }

  // A C2SP signed note: text up to the last blank line, then `— <name> <base64(id ‖ sig)>` lines.
  function parseNote(note) {
    const split = note.lastIndexOf("\n\n");
    if (split < 0) throw new Error("the checkpoint has no blank line before its signatures");
    const text = note.slice(0, split + 1);
    const block = note.slice(split + 2);
    if (!block.endsWith("\n")) throw new Error("the checkpoint does not end with a newline");
    const signatures = block.slice(0, -1).split("\n").map(function (line) {
      if (!line.startsWith(DASH + " ")) throw new Error("a signature line must start with an em dash");
      const rest = line.slice(2);
      const space = rest.indexOf(" ");
      if (space < 1) throw new Error("a signature line must be \u2014 <name> <signature>");
      const blob = b64(rest.slice(space + 1));
      if (blob.length < 5) throw new Error("a signature is too short");
      return { name: rest.slice(0, space), id: blob.slice(0, 4), sig: blob.slice(4) };
    });
    return { text: text, signatures: signatures };
  }

  async function verifyCheckpoint(note, key) {
    const parsed = parseNote(note);
    const mine = parsed.signatures.filter(function (s) { return s.name === key.name && equal(s.id, key.id); });
    if (mine.length === 0) throw new Error("no signature by " + key.name);
    for (const s of mine) {
      const ok = await subtle().verify({ name: "Ed25519" }, key.key, s.sig, enc.encode(parsed.text));
      if (!ok) throw new Error("the signature by " + key.name + " does not verify");
    }
    const lines = parsed.text.split("\n");
    if (lines.length < 4) throw new Error("the checkpoint body needs origin, size and root");
    const origin = lines[0];
    if (origin !== key.name) throw new Error("the checkpoint is of " + origin + ", not " + key.name);
    if (!/^(0|[1-9][0-9]{0,15})$/.test(lines[1])) throw new Error("the tree size is not a number");
    const size = Number(lines[1]);
    const rootHash = b64(lines[2]);
    if (rootHash.length !== 32) throw new Error("the root hash is not 32 bytes");
    return { origin: origin, size: size, root: rootHash };
  }

  // RFC 9162 §2.1.3.2.
  async function rootFromInclusion(leaf, index, size, proof) {
    if (index >= size) throw new Error("index beyond the tree");
    let fn = index, sn = size - 1, r = leaf;
    for (const p of proof) {
      if (sn === 0) throw new Error("the proof is too long");
      if (fn % 2 === 1 || fn === sn) {
        r = await nodeHash(p, r);
        if (fn % 2 === 0) {
          while (fn % 2 === 0 && fn !== 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
        }
      } else {
        r = await nodeHash(r, p);
      }
      fn = Math.floor(fn / 2);
      sn = Math.floor(sn / 2);
    }
    if (sn !== 0) throw new Error("the proof is too short");
    return r;
  }

  // MTH over leaf hashes, RFC 9162 §2.1.1.
  async function treeHash(leaves, from, to) {
    const n = to - from;
    if (n === 0) return sha256(new Uint8Array(0));
    if (n === 1) return leaves[from];
    let k = 1;
    while (k * 2 < n) k *= 2;
    return nodeHash(await treeHash(leaves, from, from + k), await treeHash(leaves, from + k, to));
  }

  // Verifies an export; returns { ok, checkpoint, verified, failures: [text] } and never throws.
  async function verifyExport(text, keyText) {
    const report = { ok: false, checkpoint: null, verified: 0, failures: [] };
    let exp, key, cp;
    try { exp = JSON.parse(text); } catch (e) { report.failures.push("export: not JSON (" + e.message + ")"); return report; }
    if (!exp || exp.format !== FORMAT || typeof exp.checkpoint !== "string" || !Array.isArray(exp.entries)) {
      report.failures.push("export: not a " + FORMAT + " document");
      return report;
    }
    try { key = await parseKey(keyText); } catch (e) { report.failures.push("log key: " + e.message); return report; }
    try { cp = await verifyCheckpoint(exp.checkpoint, key); } catch (e) { report.failures.push("checkpoint: " + e.message); return report; }
    report.checkpoint = { origin: cp.origin, size: cp.size, root: hex(cp.root) };
    const complete = exp.complete === true;
    const leaves = [];
    let previous = -1, municipality = null, verified = 0;
    for (const entry of exp.entries) {
      const index = entry && entry.index;
      const fail = function (why) { report.failures.push("entry " + index + ": " + why); };
      if (!Number.isSafeInteger(index) || index < 0 || typeof entry.data !== "string") {
        report.failures.push("export: an entry without a valid index and data");
        continue;
      }
      if (index <= previous) fail("out of order or repeated (indexes must increase)");
      previous = index;
      if (index >= cp.size) { fail("beyond the checkpoint's tree size " + cp.size); continue; }
      let data;
      try { data = JSON.parse(entry.data); } catch (e) { data = null; fail("data is not JSON"); }
      if (data) {
        if (data.seq !== index) fail("its data says it is entry " + data.seq + ": moved or reordered");
        if (typeof data.municipality === "string") {
          if (municipality === null) municipality = data.municipality;
          else if (municipality !== data.municipality) fail("belongs to another municipality's log");
        }
      }
      const leaf = await leafHash(entry.data);
      if (complete) {
        if (index === leaves.length) leaves.push(leaf);
      } else {
        const proof = Array.isArray(entry.proof) ? entry.proof : [];
        if (proof.length === 0 && cp.size > 1) { fail("no inclusion proof"); continue; }
        let hashes;
        try {
          hashes = proof.map(function (p) { const h = b64(p); if (h.length !== 32) throw new Error(); return h; });
        } catch (e) { fail("a proof hash is not base64 of 32 bytes"); continue; }
        let r;
        try { r = await rootFromInclusion(leaf, index, cp.size, hashes); } catch (e) { fail("inclusion proof: " + e.message); continue; }
        if (!equal(r, cp.root)) { fail("not in the checkpoint's tree: tampered or the proof is wrong"); continue; }
      }
      verified++;
    }
    if (complete) {
      if (leaves.length !== cp.size) {
        report.failures.push("entries " + leaves.length + ".." + cp.size + " are missing (the checkpoint covers " + cp.size + ")");
      } else if (!equal(await treeHash(leaves, 0, leaves.length), cp.root)) {
        report.failures.push("the entries do not hash to the checkpoint's root: the log was rewritten or reordered");
      }
    }
    report.ok = report.failures.length === 0;
    report.verified = report.ok ? verified : 0;
    return report;
  }

  root.firstkeyVerifyExport = verifyExport;

  // The page: read the pasted or chosen file, verify, say what was found.
  function wire(form) {
    const out = form.querySelector("[data-result]");
    const say = function (html, bad) {
      out.textContent = "";
      out.className = "notice" + (bad ? " error" : "");
      for (const line of html) {
        const p = root.document.createElement("p");
        p.textContent = line;
        out.appendChild(p);
      }
      out.hidden = false;
    };
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      const file = form.elements.file && form.elements.file.files && form.elements.file.files[0];
      const pasted = form.elements.export.value;
      const read = file ? file.text() : Promise.resolve(pasted);
      form.setAttribute("data-state", "verifying");
      read.then(function (text) { return verifyExport(text, form.elements.key.value); }).then(function (r) {
        if (r.ok) {
          say(["Verified: " + r.verified + " entr" + (r.verified === 1 ? "y is" : "ies are") + " in the log " +
            r.checkpoint.origin + " as signed at tree size " + r.checkpoint.size + ".",
          "Root hash " + r.checkpoint.root + "."], false);
        } else {
          say(["NOT verified:"].concat(r.failures), true);
        }
        form.setAttribute("data-state", r.ok ? "verified" : "failed");
      }).catch(function (e) {
        say(["NOT verified: " + e.message], true);
        form.setAttribute("data-state", "failed");
      });
    });
    form.setAttribute("data-ready", "true");
  }

  if (root.document) {
    root.document.addEventListener("DOMContentLoaded", function () {
      root.document.querySelectorAll("form[data-verifier]").forEach(wire);
    });
  }
})(typeof window !== "undefined" ? window : globalThis);
