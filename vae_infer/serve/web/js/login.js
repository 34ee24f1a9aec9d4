// The sign-in field shown when an API call answers 401: a password field and a button (no <form>: nothing is
// submitted by the browser itself). The token goes to POST /v1/login and is dropped from the field and from
// memory once the server has answered; what stays is the server's HttpOnly cookie.

const $ = (id) => document.getElementById(id);

export function loginPrompt(message, login) {
  const box = $("login");
  const field = $("login-token");
  const button = $("login-button");
  const note = $("login-message");
  note.textContent = message;
  note.className = "note";
  box.hidden = false;
  field.focus();
  return new Promise((resolve) => {
    const attempt = async () => {
      const token = field.value;
      if (!token) return;
      button.disabled = true;
      try {
        await login(token);
        field.value = "";
        box.hidden = true;
        field.removeEventListener("keydown", onKey);
        button.removeEventListener("click", attempt);
        resolve();
      } catch (e) {
        note.textContent = e.status === 401 ? "That token is not this server's; try again." : `Sign-in failed: ${e.message}`;
        note.className = "error";
        field.select();
      } finally {
        button.disabled = false;
      }
    };
    const onKey = (e) => { if (e.key === "Enter") attempt(); };
    field.addEventListener("keydown", onKey);
    button.addEventListener("click", attempt);
  });
}
