"""Chat over the course documents: `streamlit run ui/app.py`.

A thin shell over rag.api: settings come from load_settings() (rag.toml, RAG_* variables) with the
sidebar's choices on top; the retriever and the language model are loaded once per process with
st.cache_resource and shared by every session. The index directory is the one `rag index` writes:
the cached Retriever switches to a newly published index by itself, so a rebuild from the CLI shows
up here without a restart.

Visitors are strangers (ui/access.py): the model servers they may pick are a list set by whoever runs
the app (no free-text URL), the configured API key goes to the configured server only, and adding or
removing documents or building the index needs the admin secret (RAG_ADMIN_SECRET); without one the
controls are not drawn and the actions refuse.

Nothing the app shows can make a visitor's browser fetch a URL chosen by a course file's author or a model
server: every text of a course file or a model rendered as markdown goes through
ui.render.safe_markdown (images become plain links, raw HTML shows as text), the answer while it streams too;
passages are rendered through ui.highlight (safe markdown, the quote highlighted by a markdown directive).

Conversations are kept across reloads and restarts, per visitor, in a local SQLite file; sources open in
their document; answers get thumbs up/down (ui/chat.py and the modules it names).
"""

from __future__ import annotations

import logging
from typing import Any

import streamlit as st

from rag.answering.answer import Source
from rag.answering.plan import MAX_QUESTION_CHARS
from rag.api import effective_model, get_generator, http_limits, index_corpus, make_pipeline, open_retriever
from rag.config import Settings, load_settings
from rag.errors import GeneratorError, IndexNotFound, RagError
from rag.generation.base import Generator
from rag.generation.factory import get_generator as backend_for
from rag.generation.factory import resolve_model
from rag.retrieval.retriever import MODES, Retriever
from ui import chat
from ui.access import (
    admin_enabled,
    allowed_servers,
    is_admin,
    require_admin,
    server_key,
)
from ui.files import (
    ALLOWED_EXTENSIONS,
    MAX_UPLOAD_MB,
    indexed_under,
    remove_document,
    save_upload,
)
from ui.render import (
    display_path,
    index_facts,
    md_escape,
    safe_markdown,
    source_label,
    timing_caption,
)

log = logging.getLogger("course_rag.ui")

STAGES = {"read": ("Reading files", 0.0, 0.2), "embed": ("Embedding passages", 0.2, 0.95),
          "index": ("Writing the index", 0.95, 1.0)}


# ---- resources, loaded once per process ---------------------------------------------------------

@st.cache_resource(show_spinner=False, max_entries=4)
def load_retriever(index_dir: str, embed_model: str, embed_dtype: str, rrf_k: int, _settings: Settings) -> Retriever:
    """The retriever over `index_dir`; it reloads by itself when `rag index` publishes a new index."""
    return open_retriever(_settings)


@st.cache_resource(show_spinner=False, max_entries=4)
def load_generator(model: str, model_name: str | None, keyed: bool, _settings: Settings,
                   _api_key: str | None, limits: tuple[tuple[str, float | int], ...] = ()) -> Generator:
    """The language model backend (bundled local model, a model folder or an OpenAI-compatible URL).

    `keyed` (part of the cache key) says whether the configured API key may go to this server; `limits`
    (part of the key too) are a server's timeout, deadline and reply cap (rag.api.http_limits).
    """
    if resolve_model(model).kind != "http":
        return get_generator(_settings)
    return backend_for(model, model_name=model_name, api_key=_api_key, **dict(limits))


def retriever_for(settings: Settings) -> Retriever:
    """The shared retriever for these settings (keyed on what the index and embedder depend on)."""
    return load_retriever(str(settings.index_dir), settings.embed_model, settings.embed_dtype, settings.rrf_k,
                          settings)


def generator_for(settings: Settings, base: Settings) -> Generator:
    """The shared language model for these settings; a server must be one `base` (the app's own settings)
    allows, and only the configured one gets the configured key (ui.access).

    :raises RagError: a server that is not allowed, or a model that cannot be loaded.
    """
    spec = effective_model(settings)
    if resolve_model(spec).kind != "http":
        return load_generator(spec, settings.model_name, False, settings, None)
    key = server_key(settings.model, base)
    return load_generator(settings.model, settings.model_name, bool(key), settings, key,
                          tuple(http_limits(settings).items()))


# ---- sidebar -------------------------------------------------------------------------------------

def sidebar_settings(base: Settings) -> dict[str, Any]:
    """The sidebar's retrieval, generation and model choices, as overrides for load_settings()."""
    sb = st.sidebar
    sb.subheader("Retrieval")
    mode = sb.selectbox("Mode", MODES, index=MODES.index(base.mode), key="mode",
                        help="dense = embedding similarity, bm25 = keywords, hybrid = both (rank fusion)")
    top_k = sb.slider("Passages (top-k)", 1, 20, min(base.top_k, 20), key="top_k")
    sb.subheader("Generation")
    temperature = sb.slider("Temperature", 0.0, 2.0, min(float(base.temperature), 2.0), 0.05, key="temperature",
                            help="0 = always the most likely word (greedy)")
    top_p = sb.slider("Top-p", 0.05, 1.0, max(float(base.top_p), 0.05), 0.05, key="top_p")
    max_new = sb.number_input("Max new tokens", 1, 4096, min(base.max_new_tokens, 4096), key="max_new_tokens")
    sb.subheader("Model")
    spec = effective_model(base)  # "auto" made concrete: the course's RAFT adapter when the index is its course
    try:  # the one model-spec parser every command uses (rag.generation.factory)
        kind = resolve_model(spec).kind
    except RagError:  # an unusable spec: loading it below shows the error
        kind = "local"
    remote = kind == "http"
    local_label = ("Bundled local model" if kind == "bundled" or remote else
                   "Bundled local model, RAFT-tuned on this course" if spec == "bundled-raft" else f"Local model ({spec})")
    servers = allowed_servers(base)  # set by whoever runs the app; a visitor can only pick among them
    model, model_name = ("auto" if remote else base.model), None
    if not servers:
        sb.caption(local_label)
    elif sb.radio("Backend", ["local", "server"], index=1 if remote else 0, key="backend",
                  format_func=lambda b: local_label if b == "local" else "OpenAI-compatible server") == "server":
        model = sb.selectbox("Server", servers, key="server_url", help="The servers this app is allowed to use")
        model_name = sb.text_input("Model name", base.model_name or "", key="model_name").strip() or None
    return {"mode": mode, "top_k": top_k, "temperature": temperature, "top_p": top_p,
            "max_new_tokens": int(max_new), "model": model or None, "model_name": model_name}


def show_index_facts(box: Any, retriever: Retriever | None, settings: Settings) -> None:
    """Documents, chunks, embedder and last build of the live index (re-read on every run)."""
    with box:
        st.subheader("Index")
        if retriever is None:
            st.caption(f"No index loaded from {md_escape(display_path(settings.index_dir))}")
            return
        facts = index_facts(retriever.index.manifest)
        st.markdown("  \n".join(f"**{k}:** {md_escape(v)}" for k, v in facts.items()))
        st.caption(md_escape(display_path(settings.index_dir)))


def build_index(settings: Settings, *, rebuild: bool = False) -> bool:
    """Index the corpus folder with a progress bar; True when it worked (the outcome is left with flash())."""
    bar = st.progress(0.0, text="Starting…")

    def progress(stage: str, done: int, total: int) -> None:
        label, lo, hi = STAGES.get(stage, (stage, 0.0, 1.0))
        frac = lo + (hi - lo) * (done / total if total else 1.0)
        bar.progress(min(max(frac, 0.0), 1.0), text=f"{label} ({done}/{total})")

    try:
        report = index_corpus(settings.corpus_dir, settings, rebuild=rebuild, on_progress=progress)
    except RagError as exc:
        bar.empty()
        flash("error", f"Indexing failed: {exc}")
        return False
    bar.empty()
    notes = [f"{s.source} skipped: {s.reason}" for s in report.skipped]
    n_files = len(report.added) + len(report.changed) + len(report.unchanged) + len(report.kept_previous)
    summary = (f"Index up to date: {n_files} documents, {report.chunks_total} chunks"
               + (f" ({report.chunks_embedded} new passages embedded)" if report.wrote else ", nothing changed"))
    flash("success", summary)
    for note in notes:
        flash("warning", note)
    for s in report.notes:  # text no reader sees, dropped (docs/guide/course-files.md, skipped files)
        flash("info", f"{s.source}: {s.reason}")
    return True


def flash(kind: str, text: str) -> None:
    """Keep a message for show_flashes() (it survives st.rerun, unlike elements drawn in this run)."""
    st.session_state.setdefault("flash", []).append((kind, text))


def show_flashes() -> None:
    """Show (and forget) the messages left by flash()."""
    for kind, text in st.session_state.pop("flash", []):
        getattr(st, kind)(safe_markdown(text))  # they name course files and quote model servers


def admin_secret(base: Settings) -> str | None:
    """The sidebar's admin sign-in (drawn only when an admin secret is configured); the secret typed, if right."""
    if not admin_enabled(base):
        return None
    given = st.sidebar.text_input("Admin secret", type="password", key="admin_secret",
                                  help="Whoever runs the app set it (RAG_ADMIN_SECRET); it unlocks adding and "
                                       "removing documents.")
    if given and not is_admin(base, given):
        st.sidebar.error("That is not the admin secret.")
        return None
    return given or None


def documents_section(settings: Settings, retriever: Retriever | None, admin: str | None) -> None:
    """List the indexed files; for an admin, add (.md/.txt/.pdf) or remove documents, re-indexing incrementally.

    `admin` is the admin secret the visitor typed (None: not an admin, and no controls are drawn).
    """
    with st.sidebar.expander("Documents", expanded=False, icon=":material/description:"):
        show_flashes()
        manifest = retriever.index.manifest if retriever else {}
        files = manifest.get("files", {})
        if files:
            st.markdown("\n".join(f"- {md_escape(name)} · {f.get('chunks', 0)} chunks, "
                                   f"{f.get('bytes', 0) / 1024:.0f} KB" for name, f in sorted(files.items())))
        else:
            st.caption("No documents indexed yet.")
        if retriever and not indexed_under(manifest, settings.corpus_dir):
            st.warning(f"This index was built from {md_escape(manifest.get('corpus_root', '?'))}, not the course "
                       f"folder {md_escape(str(settings.corpus_dir))}: set RAG_CORPUS_DIR to that folder to "
                       "add or remove documents here.")
            return
        if not is_admin(settings, admin):
            st.caption("Adding and removing documents is for the course's admin (enter the admin secret above)."
                       if admin_enabled(settings) else
                       "Adding and removing documents is switched off: whoever runs the app can set "
                       "RAG_ADMIN_SECRET to allow an admin to.")
            return

        n = st.session_state.setdefault("upload_round", 0)
        uploads = st.file_uploader(f"Add documents ({', '.join(ALLOWED_EXTENSIONS)}, up to {MAX_UPLOAD_MB} MB)",
                                   type=[e.lstrip(".") for e in ALLOWED_EXTENSIONS], accept_multiple_files=True,
                                   max_upload_size=MAX_UPLOAD_MB, key=f"uploads_{n}")
        replace = st.checkbox("Replace files with the same name", key="replace_uploads")
        if st.button("Add to the course", key="add_docs", disabled=not uploads, icon=":material/upload:"):
            require_admin(settings, admin)  # the controls are only drawn for an admin; checked again here
            saved = 0
            for up in uploads or []:
                try:
                    result = save_upload(settings.corpus_dir, up.name, up.getvalue(), replace=replace)
                except RagError as exc:
                    flash("error", str(exc))
                    continue
                if result.status == "unchanged":
                    flash("info", f"{result.name} is already in the course")
                else:
                    saved += 1
            st.session_state.upload_round = n + 1  # a fresh uploader: the files are handled
            if saved and not build_index(settings):
                show_flashes()
                return  # no rerun: the indexing error stays on screen
            st.rerun()

        if files:
            choice = st.selectbox("Remove a document", sorted(files), index=None, key="remove_choice",
                                  placeholder="Choose a document…")
            if st.button("Remove from the course", key="remove_doc", disabled=choice is None,
                         icon=":material/delete:"):
                try:
                    require_admin(settings, admin)
                    remove_document(settings.corpus_dir, choice)
                except RagError as exc:
                    flash("error", str(exc))
                else:
                    flash("info", f"Removed {choice}")
                    if not build_index(settings):
                        show_flashes()
                        return
                st.rerun()


# ---- chat ----------------------------------------------------------------------------------------

def show_sources(sources: list[Source], abstained: bool, msg_id: str | None = None) -> None:
    """One expander per source: file, heading, score and the passage with its supporting words marked (and,
    for a stored message `msg_id`, a button that opens it in its document)."""
    if not sources:
        return
    st.caption("Nearest passages" if abstained else "Sources")
    for src in sources:
        with st.expander(source_label(src)):
            if src.quote is not None:
                st.caption("Quoted in the answer (highlighted).")
            elif not src.cited:
                st.caption("Given to the model; no answer sentence was matched to it.")
            chat.show_passage(src, msg_id)


def show_message(msg: dict[str, Any]) -> None:
    """Redraw one turn of the conversation from session state."""
    with st.chat_message(msg["role"]):
        if msg.get("error"):
            if msg.get("content"):
                st.markdown(safe_markdown(msg["content"]))
            st.error(safe_markdown(msg["error"]))
        elif msg.get("abstained"):
            st.warning(safe_markdown(msg["content"]))
        else:
            st.markdown(safe_markdown(chat.answer_text(msg)))
        for note in msg.get("notes", []):
            st.caption(md_escape(note))
        show_sources(msg.get("sources", []), bool(msg.get("abstained")), msg.get("id"))
        if msg.get("timings"):
            st.caption(timing_caption(msg["timings"]))
        chat.answer_extras(msg)


def chat_history(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The earlier turns as the pipeline wants them: role and text, leaving out questions that got no answer."""
    history: list[dict[str, str]] = []
    for m in messages:
        if m.get("error"):
            if history and history[-1]["role"] == "user":
                history.pop()  # its question goes too: it would steer the next follow-up's search
            continue
        if m.get("content"):
            history.append({"role": m["role"], "content": m["content"]})
    return history


def answer_turn(question: str, history: list[dict[str, str]], settings: Settings, retriever: Retriever,
                generator: Generator) -> dict[str, Any]:
    """Answer `question` in an assistant bubble, streaming tokens as they come; returns the turn for history."""
    turn: dict[str, Any] = {"role": "assistant", "content": ""}
    with st.chat_message("assistant"):
        slot = st.empty()
        try:
            with st.spinner("Searching the course documents…"):
                resp = make_pipeline(settings, retriever, generator).ask(question, history)
            if resp.plan.abstained:
                answer = resp.answer()
                slot.warning(safe_markdown(answer.text))
            else:
                with st.spinner(f"Reading {len(resp.plan.hits)} passages…"):  # the model's prompt prefill
                    raw = next(resp, "")
                # The whole text so far is made safe at each step (not piece by piece: "!" and "[" may
                # come in two pieces), then drawn in place of the previous step.
                slot.markdown(safe_markdown(raw) + " ▌")
                for piece in resp:
                    raw += piece
                    slot.markdown(safe_markdown(raw) + " ▌")
                with st.spinner("Matching the answer to its sources…"):
                    answer = resp.answer()
                slot.markdown(safe_markdown(answer.text or raw) or "_(the model returned no text)_")
        except GeneratorError as exc:
            turn["error"] = f"The language model failed: {exc}"
        except RagError as exc:
            turn["error"] = str(exc)
        except Exception as exc:  # a bug, not a user error: log it, keep the page usable
            log.exception("answering %r failed", question)
            turn["error"] = f"Something went wrong while answering ({type(exc).__name__}: {exc})"
        if "error" in turn:
            st.error(safe_markdown(turn["error"]))
            return turn
        notes = ([f"Searched for: {answer.query}"] if answer.query != answer.question else []) + answer.notes
        turn.update(content=answer.text, abstained=answer.abstained, sources=answer.sources, notes=notes,
                    timings=answer.timings, supports=answer.supports)
        for note in notes:
            st.caption(md_escape(note))
        show_sources(answer.sources, answer.abstained)
        st.caption(timing_caption(answer.timings))
    return turn


def load_index(settings: Settings, admin: str | None) -> Retriever | None:
    """The cached retriever, or None after showing why there is none (with a button to build the index,
    for an admin: building writes the index every visitor reads)."""
    try:
        return retriever_for(settings)
    except IndexNotFound:
        st.warning(f"There is no index at `{settings.index_dir}` yet: it is built from the course folder "
                   f"`{settings.corpus_dir}` before questions can be answered.")
        label, rebuild = "Build the index", False
    except RagError as exc:
        st.error(safe_markdown(str(exc)))
        label, rebuild = "Rebuild the index", True
    if not is_admin(settings, admin):
        st.info("Whoever runs the app can build the index with `rag index`"
                + (", or sign in as admin in the sidebar." if admin_enabled(settings) else "."))
        return None
    if st.button(label, key="build_index", type="primary", icon=":material/build:"):
        require_admin(settings, admin)
        if build_index(settings, rebuild=rebuild):
            st.rerun()
        show_flashes()
    return None


def main() -> None:
    st.set_page_config(page_title="Course assistant", page_icon=":material/school:", layout="centered")
    st.session_state.setdefault("messages", [])
    try:
        base = load_settings()
    except RagError as exc:
        st.error(safe_markdown(str(exc)))
        st.stop()
    session = chat.start(base)
    if st.sidebar.button("New chat", key="new_chat", icon=":material/add_comment:", width="stretch"):
        chat.new_conversation()
    chat.sidebar(session)
    facts_box = st.sidebar.container()  # filled once the index is loaded, below
    try:
        settings = load_settings(**sidebar_settings(base))
    except RagError as exc:
        st.error(safe_markdown(str(exc)))
        st.stop()
    admin = admin_secret(base)

    st.title("Course assistant")
    st.caption("Answers from the course documents, with the passages they come from.")
    for msg in st.session_state.messages:
        show_message(msg)
    question = st.chat_input("Ask a question about the course", max_chars=MAX_QUESTION_CHARS, key="question")
    history = chat_history(st.session_state.messages)
    if question:
        st.session_state.messages.append({"role": "user", "content": question})
        show_message(st.session_state.messages[-1])
        chat.remember(st.session_state.messages[-1])

    # Everything above is on screen before the models load (the first run takes a while).
    status = st.empty()
    loaded_key = f"{settings.index_dir}|{effective_model(settings)}|{settings.model_name}"
    if st.session_state.get("loaded") != loaded_key:
        status.info("Loading the models and the index…", icon=":material/hourglass_top:")
    retriever = load_index(settings, admin)
    generator: Generator | None = None
    try:
        generator = generator_for(settings, base)
    except RagError as exc:
        st.error(safe_markdown(f"The language model could not be loaded: {exc}"))
    status.empty()
    if retriever is not None and generator is not None:
        st.session_state.loaded = loaded_key
    show_index_facts(facts_box, retriever, settings)
    documents_section(settings, retriever, admin)

    if question:
        if retriever is None or generator is None:
            missing = "course index" if retriever is None else "language model"
            st.session_state.messages.append({"role": "assistant", "content": "",
                                              "error": f"The {missing} is not available (see above)."})
            show_message(st.session_state.messages[-1])
            chat.remember(st.session_state.messages[-1])
            return
        st.session_state.messages.append(answer_turn(question, history, settings, retriever, generator))
        chat.remember(st.session_state.messages[-1], rerun=True)


main()
