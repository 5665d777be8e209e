// firstkey door panel: the stand-in for the NFC/BLE link between a responder's phone and the lock.
// It does what a phone app would: take the lock's challenge, build the proof-of-possession message
// (firmware-agent/token/src/pop.rs), have the security key sign SHA-256 of it as a WebAuthn
// challenge for the server's relying party, and hand token and assertion to the lock, which decides.
"use strict";

(function () {
  const CONTEXT = "firstkey-pop-v1\u0000";

  function fromB64u(s) {
    const b64 = s.replace(/-/g, "+").replace(/_/g, "/");
    const bin = atob(b64 + "===".slice((b64.length + 3) % 4));
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  function toB64u(buf) {
    const bytes = new Uint8Array(buf);
    let bin = "";
    for (let i = 0; i < bytes.length; i++) bin += String.fromCharCode(bytes[i]);
    return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function ascii(s) {
    const out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i) & 0xff;
    return out;
  }

  async function sha256(bytes) {
    return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  }

  // "firstkey-pop-v1\0" ‖ challenge(32) ‖ len(lock id) ‖ lock id ‖ SHA-256(token)
  async function popMessage(challenge, lockId, token) {
    const id = ascii(lockId);
    const hash = await sha256(token);
    const out = new Uint8Array(16 + 32 + 1 + id.length + 32);
    out.set(ascii(CONTEXT), 0);
    out.set(challenge, 16);
    out[48] = id.length;
    out.set(id, 49);
    out.set(hash, 49 + id.length);
    return out;
  }

  // A door pass is "<token>.<credential id>", both base64url.
  function parsePass(text) {
    const parts = text.trim().split(".");
    if (parts.length !== 2 || !/^[A-Za-z0-9_-]+$/.test(parts[0]) || !/^[A-Za-z0-9_-]+$/.test(parts[1])) {
      throw new Error("That is not a door pass. Copy the whole pass from your firstkey page.");
    }
    return { token: fromB64u(parts[0]), credential: fromB64u(parts[1]) };
  }

  async function post(path, body) {
    const response = await fetch(path, {
      method: "POST",
      credentials: "omit",
      headers: { "Content-Type": "application/json", "Accept": "application/json" },
      body: JSON.stringify(body)
    });
    const data = await response.json().catch(function () { return null; });
    if (!response.ok) throw new Error((data && data.error) || ("The lock answered " + response.status + "."));
    return data;
  }

  function say(text, isError) {
    const status = document.getElementById("status");
    status.textContent = text;
    status.classList.toggle("error", Boolean(isError));
  }

  function verdict(outcome) {
    const v = document.getElementById("verdict");
    const allow = outcome === "allow";
    v.textContent = allow ? "ALLOW" : "DENY";
    v.className = "verdict " + (allow ? "allow" : "deny");
    v.hidden = false;
    v.setAttribute("data-outcome", outcome);
  }

  async function present(form) {
    const pass = parsePass(form.elements.door_pass.value);
    const lock = await post("/challenge", {});
    const message = await popMessage(fromB64u(lock.challenge), lock.lock_id, pass.token);
    say("Touch your security key…");
    const cred = await navigator.credentials.get({
      publicKey: {
        challenge: await sha256(message),
        rpId: lock.rp_id,
        allowCredentials: [{ type: "public-key", id: pass.credential }],
        userVerification: "discouraged",
        timeout: 60000
      }
    });
    const r = cred.response;
    const decision = await post("/present", {
      id: lock.id,
      token: toB64u(pass.token),
      authenticator_data: toB64u(r.authenticatorData),
      client_data_json: toB64u(r.clientDataJSON),
      signature: toB64u(r.signature)
    });
    verdict(decision.outcome);
    say("The lock decided (receipt " + decision.seq + ").");
  }

  document.addEventListener("DOMContentLoaded", function () {
    const form = document.getElementById("present");
    const field = form.elements.door_pass;
    // A pass handed over in the fragment (never sent to any server) fills the field, then leaves
    // the address bar and the history.
    const hash = window.location.hash.slice(1);
    if (hash.indexOf("pass=") === 0) {
      field.value = decodeURIComponent(hash.slice(5));
      history.replaceState(null, "", window.location.pathname);
    }
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      document.getElementById("verdict").hidden = true;
      if (!window.PublicKeyCredential) {
        say("This browser cannot use security keys.", true);
        return;
      }
      const button = form.querySelector("button");
      button.disabled = true;
      present(form).catch(function (err) {
        let text = err && err.message ? err.message : String(err);
        if (err && err.name === "NotAllowedError") text = "The security key did not answer, or you cancelled. Try again.";
        if (err && err.name === "SecurityError") text = "This page's address is not under the relying party " + document.getElementById("panel").dataset.rpId + "; open the panel under that name.";
        say(text, true);
      }).finally(function () { button.disabled = false; });
    });
    form.setAttribute("data-ready", "true");
  });
})();
