// firstkey portal: the WebAuthn ceremonies, the one thing the pages cannot do without script.
// Each ceremony is two calls to the JSON API (…/start returns {ceremony, options}; …/finish takes
// {ceremony, credential}), with navigator.credentials in between. Forms opt in with
// data-ceremony="sign-in" | "enrol" | "step-up" | "add-key" | "token"; everything else on the pages is
// plain HTML. A "token" form (a door pass) is one request: the challenge comes from a GET that stores
// nothing (data-challenge), and the form itself is submitted with the assertion in its "assertion" field.
"use strict";

(function () {
  function fromB64u(s) {
    const b64 = s.replace(/-/g, "+").replace(/_/g, "/");
    const bin = atob(b64 + "===".slice((b64.length + 3) % 4));
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out.buffer;
  }

  function toB64u(buf) {
    const bytes = new Uint8Array(buf);
    let bin = "";
    for (let i = 0; i < bytes.length; i++) bin += String.fromCharCode(bytes[i]);
    return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function withIds(list) {
    return (list || []).map(function (c) {
      return Object.assign({}, c, { id: fromB64u(c.id) });
    });
  }

  function creationOptions(options) {
    const pk = Object.assign({}, options.publicKey);
    pk.challenge = fromB64u(pk.challenge);
    pk.user = Object.assign({}, pk.user, { id: fromB64u(pk.user.id) });
    pk.excludeCredentials = withIds(pk.excludeCredentials);
    return { publicKey: pk };
  }

  function requestOptions(options) {
    const pk = Object.assign({}, options.publicKey);
    pk.challenge = fromB64u(pk.challenge);
    pk.allowCredentials = withIds(pk.allowCredentials);
    return { publicKey: pk };
  }

  function registration(cred) {
    const r = cred.response;
    return {
      id: cred.id,
      rawId: toB64u(cred.rawId),
      type: cred.type,
      response: {
        attestationObject: toB64u(r.attestationObject),
        clientDataJSON: toB64u(r.clientDataJSON),
        transports: r.getTransports ? r.getTransports() : undefined
      },
      clientExtensionResults: cred.getClientExtensionResults()
    };
  }

  function assertion(cred) {
    const r = cred.response;
    return {
      id: cred.id,
      rawId: toB64u(cred.rawId),
      type: cred.type,
      response: {
        authenticatorData: toB64u(r.authenticatorData),
        clientDataJSON: toB64u(r.clientDataJSON),
        signature: toB64u(r.signature),
        userHandle: r.userHandle ? toB64u(r.userHandle) : null
      },
      clientExtensionResults: cred.getClientExtensionResults()
    };
  }

  // POST JSON to our API; resolves to the parsed body, rejects with the problem's words.
  async function post(path, body) {
    const response = await fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "Accept": "application/json" },
      body: JSON.stringify(body)
    });
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
    if (!response.ok) {
      const words = data && (data.detail || data.title);
      throw new Error(words || ("The server answered " + response.status + "."));
    }
    return data;
  }

  function say(form, text, isError) {
    const status = form.querySelector("[data-status]");
    if (!status) return;
    status.textContent = text;
    status.classList.toggle("error", Boolean(isError));
  }

  function busy(form, on) {
    form.querySelectorAll("button").forEach(function (b) { b.disabled = on; });
    form.setAttribute("aria-busy", on ? "true" : "false");
  }

  function fail(form, err) {
    let text = err && err.message ? err.message : String(err);
    if (err && err.name === "NotAllowedError") {
      text = "The security key did not answer, or you cancelled. Try again.";
    }
    say(form, text, true);
    busy(form, false);
  }

  async function signIn(form) {
    const body = {
      municipality: form.elements.municipality.value.trim(),
      email: form.elements.email.value.trim()
    };
    say(form, "Touch your security key or confirm your passkey…");
    const start = await post("/api/v1/auth/sign-in/start", body);
    const cred = await navigator.credentials.get(requestOptions(start.options));
    await post("/api/v1/auth/sign-in/finish", { ceremony: start.ceremony, credential: assertion(cred) });
    say(form, "Signed in.");
    // A link's secret in the fragment (a consent link that sent us here to sign in) goes along.
    window.location.assign((form.dataset.next || "/home") + window.location.hash);
  }

  async function enrol(form, secret) {
    if (!secret) throw new Error("This link is incomplete. Open the whole link from your mail.");
    const api = form.dataset.api;
    say(form, "Follow your browser's prompt to create the key…");
    const start = await post(api + "/start", { secret: secret });
    const cred = await navigator.credentials.create(creationOptions(start.options));
    await post(api + "/finish", { ceremony: start.ceremony, credential: registration(cred) });
    say(form, "Done: your key is enrolled and you are signed in.");
    window.location.assign("/home");
  }

  async function stepUp(form) {
    say(form, "Touch your security key or confirm your passkey…");
    const start = await post("/api/v1/auth/step-up/start", {});
    const cred = await navigator.credentials.get(requestOptions(start.options));
    await post("/api/v1/auth/step-up/finish", { ceremony: start.ceremony, credential: assertion(cred) });
    say(form, "Confirmed. Saving…");
    const target = document.getElementById(form.dataset.resubmit || "");
    if (target) {
      target.submit();
    } else {
      window.location.reload();
    }
  }

  // Live consent: a passkey assertion on this session (after the request was asked), then the
  // answer posted with the link's secret, which never left the browser's fragment until now.
  async function consent(form, secret, answer) {
    if (!secret) throw new Error("This link is incomplete. Open the whole link from your mail.");
    if (answer !== "approve" && answer !== "refuse") throw new Error("Choose approve or refuse.");
    say(form, "Confirm with your passkey…");
    const start = await post("/api/v1/auth/step-up/start", {});
    const cred = await navigator.credentials.get(requestOptions(start.options));
    await post("/api/v1/auth/step-up/finish", { ceremony: start.ceremony, credential: assertion(cred) });
    form.elements.secret.value = secret;
    form.elements.answer.value = answer;
    say(form, "Confirmed. Sending your answer…");
    form.submit();
  }

  async function getJson(path) {
    const response = await fetch(path, {
      method: "GET",
      credentials: "same-origin",
      headers: { "Accept": "application/json" }
    });
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
    if (!response.ok) {
      const words = data && (data.detail || data.title);
      throw new Error(words || ("The server answered " + response.status + "."));
    }
    return data;
  }

  // A door pass: sign this form's own challenge, then send the form once with the assertion.
  async function token(form) {
    say(form, "Touch your security key…");
    const challenge = await getJson(form.dataset.challenge);
    const cred = await navigator.credentials.get(requestOptions(challenge.options));
    form.elements.assertion.value = JSON.stringify(assertion(cred));
    say(form, "Confirmed. Getting the door pass…");
    form.submit();
  }

  // "My security keys": a registration ceremony bound to the signed-in session (needs a fresh
  // step-up, which the page asks for first).
  async function addKey(form) {
    const name = form.elements.name ? form.elements.name.value.trim() : "";
    say(form, "Follow your browser's prompt to add the key…");
    const start = await post("/api/v1/me/keys/start", {});
    const cred = await navigator.credentials.create(creationOptions(start.options));
    const body = { ceremony: start.ceremony, credential: registration(cred) };
    if (name) body.name = name;
    await post("/api/v1/me/keys/finish", body);
    say(form, "Added.");
    window.location.assign("/keys?done=added");
  }

  function wire(form, run) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      if (!window.PublicKeyCredential) {
        say(form, "This browser cannot use security keys or passkeys.", true);
        return;
      }
      busy(form, true);
      run().catch(function (err) { fail(form, err); });
    });
    form.setAttribute("data-ready", "true");
  }

  document.addEventListener("DOMContentLoaded", function () {
    // The link's secret is in the fragment (never sent to a server log); take it and drop it from
    // the address bar and the history.
    const secret = window.location.hash.slice(1);
    document.querySelectorAll("form[data-ceremony]").forEach(function (form) {
      const kind = form.dataset.ceremony;
      if (kind === "sign-in") wire(form, function () { return signIn(form); });
      if (kind === "enrol") {
        if (secret) history.replaceState(null, "", window.location.pathname);
        wire(form, function () { return enrol(form, secret); });
      }
      if (kind === "step-up") wire(form, function () { return stepUp(form); });
      if (kind === "add-key") wire(form, function () { return addKey(form); });
      if (kind === "consent") {
        if (secret) history.replaceState(null, "", window.location.pathname);
        form.addEventListener("submit", function (event) {
          event.preventDefault();
          if (!window.PublicKeyCredential) {
            say(form, "This browser cannot use passkeys.", true);
            return;
          }
          const answer = event.submitter ? event.submitter.dataset.answer : "";
          busy(form, true);
          consent(form, secret, answer).catch(function (err) { fail(form, err); });
        });
        form.setAttribute("data-ready", "true");
      }
      if (kind === "token") wire(form, function () { return token(form); });
    });
  });
})();
