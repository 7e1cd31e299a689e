// The browser's login, shared by the dashboard and the explorer. A token is
// entered once and POSTed to /api/session; the coordinator keeps a session for
// it and answers with an HttpOnly cookie (coordinator/web/session.py). The page
// keeps nothing: the input is cleared as soon as the token is sent.

const PANEL = `
  <h2>Token</h2>
  <p>This coordinator needs a reader, client or admin token. It is sent once and kept by
  the coordinator as a session for this browser; the page does not store it.</p>
  <form id="login-form" autocomplete="off">
    <input type="password" name="token" data-testid="token" placeholder="paste a token" required>
    <button type="submit" data-testid="login-submit">Open</button>
    <p class="error" id="login-error" data-testid="login-error" role="alert"></p>
  </form>`;

export async function whoami() {
  const response = await fetch("/api/session", { credentials: "same-origin" });
  return response.json(); // {auth: tokens are on, role and holder: this browser's, or null}
}

// Resolves with the session once the browser has one: at once when tokens are
// off or its cookie is live, else when the person has given a valid token. The
// panel is put before `before` while it asks; `asking` hears that it does.
export async function signIn(before, asking = () => {}) {
  const session = await whoami();
  if (!session.auth || session.role) return session;
  asking();
  const panel = document.createElement("section");
  panel.id = "login";
  panel.className = "panel login";
  panel.innerHTML = PANEL;
  before.before(panel);
  const form = panel.querySelector("form");
  form.token.focus();
  await new Promise((resolve) => {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const error = panel.querySelector("#login-error");
      error.textContent = "";
      const response = await fetch("/api/session", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ token: form.token.value }),
      });
      form.token.value = "";
      if (response.ok) return resolve();
      const answer = await response.json().catch(() => ({}));
      error.textContent = answer.error || "the token was refused";
    });
  });
  panel.remove();
  return whoami();
}

export async function signOut() {
  await fetch("/api/session", { method: "DELETE", credentials: "same-origin" });
}
