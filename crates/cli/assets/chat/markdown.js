// A small Markdown renderer for model replies: fenced code blocks, inline code, headings,
// lists, block quotes, tables, rules, emphasis, links. It builds DOM nodes and puts every
// piece of the text in them as text nodes, never as HTML (no innerHTML anywhere), so
// whatever a reply contains (<script>, <img onerror>, javascript: links) shows as the
// characters it is. Links are kept only for http(s) and mailto URLs.

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$/;
const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}> ?(.*)$/;
const ITEM = /^( *)([-*+]|\d{1,9}[.)])(?:\s+(.*)|$)/;
const TABLE_SEP = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;
const SAFE_URL = /^(https?:\/\/|mailto:)/i;

// Inline spans, earliest match wins: code, bold, strike, italic, links, bare URLs, escapes.
// Emphasis spans at most 500 characters, so a long line full of unclosed `*` or `_` costs
// linear time, not quadratic.
const INLINE = new RegExp(
  [
    /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/.source, // 1, 2: code span
    /\*\*(?=\S)([\s\S]{0,500}?\S)\*\*/.source, // 3: bold
    /(?<![\w])__(?=\S)([\s\S]{0,500}?\S)__(?![\w])/.source, // 4: bold
    /~~(?=\S)([\s\S]{0,500}?\S)~~/.source, // 5: strike
    /\*(?=[^\s*])([\s\S]{0,500}?[^\s*])\*(?!\*)/.source, // 6: italic
    /(?<![\w])_(?=[^\s_])([\s\S]{0,500}?[^\s_])_(?![\w])/.source, // 7: italic
    /\[([^\]\n]+)\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"\n]*")?\s*\)/.source, // 8, 9: link
    /(https?:\/\/[^\s<>"'`]*[^\s<>"'`.,;:!?)\]}*_])/.source, // 10: bare URL
    /\\([!-\/:-@\[-`{-~])/.source, // 11: escaped punctuation
  ].join("|"),
  "g",
);

function el(doc, tag, cls) {
  const e = doc.createElement(tag);
  if (cls) e.className = cls;
  return e;
}

function link(doc, url, parent) {
  if (!SAFE_URL.test(url)) return null;
  const a = el(doc, "a");
  a.href = url;
  a.rel = "noopener noreferrer nofollow";
  a.target = "_blank";
  parent.append(a);
  return a;
}

/** Appends the inline Markdown of `text` to `parent`. */
function inline(doc, text, parent) {
  let last = 0;
  INLINE.lastIndex = 0;
  for (let m; (m = INLINE.exec(text)); ) {
    if (m.index > last) parent.append(text.slice(last, m.index));
    last = INLINE.lastIndex;
    // Recursion starts its own scan: remember where this one is.
    const resume = INLINE.lastIndex;
    if (m[1] !== undefined) {
      let code = m[2];
      if (code.length > 1 && code.startsWith(" ") && code.endsWith(" ") && code.trim()) code = code.slice(1, -1);
      const c = el(doc, "code");
      c.textContent = code;
      parent.append(c);
    } else if (m[3] !== undefined || m[4] !== undefined) {
      const s = el(doc, "strong");
      inline(doc, m[3] ?? m[4], s);
      parent.append(s);
    } else if (m[5] !== undefined) {
      const s = el(doc, "del");
      inline(doc, m[5], s);
      parent.append(s);
    } else if (m[6] !== undefined || m[7] !== undefined) {
      const s = el(doc, "em");
      inline(doc, m[6] ?? m[7], s);
      parent.append(s);
    } else if (m[8] !== undefined) {
      const a = link(doc, m[9], parent);
      if (a) inline(doc, m[8], a);
      else parent.append(m[0]);
    } else if (m[10] !== undefined) {
      const a = link(doc, m[10], parent);
      if (a) a.textContent = m[10];
      else parent.append(m[0]);
    } else {
      parent.append(m[11]);
    }
    INLINE.lastIndex = resume;
  }
  if (last < text.length) parent.append(text.slice(last));
}

/** Inline text whose lines become separate lines (chat replies use single newlines as breaks). */
function lines(doc, text, parent) {
  text.split("\n").forEach((line, i) => {
    if (i) parent.append(el(doc, "br"));
    inline(doc, line, parent);
  });
}

function splitRow(line) {
  let s = line.trim();
  if (s.startsWith("|")) s = s.slice(1);
  if (s.endsWith("|") && !s.endsWith("\\|")) s = s.slice(0, -1);
  const cells = [];
  let cur = "";
  for (let i = 0; i < s.length; i++) {
    if (s[i] === "\\" && s[i + 1] === "|") {
      cur += "|";
      i++;
    } else if (s[i] === "|") {
      cells.push(cur.trim());
      cur = "";
    } else cur += s[i];
  }
  cells.push(cur.trim());
  return cells;
}

function codeBlock(doc, lang, code, open) {
  const wrap = el(doc, "div", "code");
  const bar = el(doc, "div", "code-bar");
  const name = el(doc, "span");
  name.textContent = lang || "text";
  bar.append(name);
  if (!open && doc.defaultView?.navigator?.clipboard) {
    const copy = el(doc, "button", "copy");
    copy.type = "button";
    copy.textContent = "Copy";
    copy.setAttribute("aria-label", `Copy the ${lang || "text"} code`);
    copy.addEventListener("click", () => {
      doc.defaultView.navigator.clipboard.writeText(code).then(
        () => (copy.textContent = "Copied"),
        () => (copy.textContent = "Copy failed"),
      );
      setTimeout(() => (copy.textContent = "Copy"), 1500);
    });
    bar.append(copy);
  }
  const pre = el(doc, "pre");
  const c = el(doc, "code");
  if (/^[\w+#.-]+$/.test(lang)) c.className = `language-${lang}`;
  c.textContent = code;
  pre.append(c);
  wrap.append(bar, pre);
  return wrap;
}

function isBlockStart(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line);
}

/** Appends the blocks of `src` (an array of lines) to `parent`. */
function blocks(doc, src, parent) {
  let i = 0;
  while (i < src.length) {
    const line = src[i];
    let m;
    if (!line.trim()) {
      i++;
    } else if ((m = FENCE.exec(line))) {
      // An unclosed fence (a reply still streaming) runs to the end.
      const fence = m[1];
      const indent = line.length - line.trimStart().length;
      const body = [];
      i++;
      let closed = false;
      while (i < src.length) {
        const t = src[i].trim();
        if (t.startsWith(fence) && t.replace(new RegExp(`^\\${fence[0]}+`), "") === "" && t.length >= fence.length) {
          closed = true;
          i++;
          break;
        }
        body.push(src[i].replace(new RegExp(`^ {0,${indent}}`), ""));
        i++;
      }
      parent.append(codeBlock(doc, m[2], body.join("\n"), !closed));
    } else if ((m = HEADING.exec(line))) {
      // `#` is an h3 (the page has h1 and h2), down to h6.
      const h = el(doc, `h${Math.min(m[1].length + 2, 6)}`);
      inline(doc, m[2], h);
      parent.append(h);
      i++;
    } else if (RULE.test(line)) {
      parent.append(el(doc, "hr"));
      i++;
    } else if (QUOTE.test(line)) {
      const body = [];
      while (i < src.length && src[i].trim() && (m = QUOTE.exec(src[i]) || (!isBlockStart(src[i]) && [0, src[i]]))) {
        body.push(m[1]);
        i++;
      }
      const q = el(doc, "blockquote");
      blocks(doc, body, q);
      parent.append(q);
    } else if ((m = ITEM.exec(line))) {
      const ordered = /\d/.test(m[2]);
      const list = el(doc, ordered ? "ol" : "ul");
      if (ordered && parseInt(m[2], 10) !== 1) list.start = parseInt(m[2], 10);
      const base = m[1].length;
      while (i < src.length) {
        const it = ITEM.exec(src[i]);
        if (!it || it[1].length < base || it[1].length > base + 3 || /\d/.test(it[2]) !== ordered) break;
        // The item's text: its first line, then lines indented past the marker (nested
        // lists among them) or lazily continued, up to a blank line not followed by indent.
        const width = it[1].length + it[2].length + 1;
        const body = [it[3] ?? ""];
        i++;
        while (i < src.length) {
          const next = src[i];
          const indent = next.length - next.trimStart().length;
          if (!next.trim()) {
            const after = src[i + 1];
            if (after !== undefined && after.trim() && after.length - after.trimStart().length > base) {
              body.push("");
              i++;
              continue;
            }
            break;
          }
          if (indent > base) body.push(next.slice(Math.min(indent, width)));
          else if (!isBlockStart(next)) body.push(next.trim());
          else break;
          i++;
        }
        const li = el(doc, "li");
        if (body.length === 1 || !body.slice(1).some((l) => isBlockStart(l) || !l.trim())) lines(doc, body.join("\n"), li);
        else blocks(doc, body, li);
        list.append(li);
        while (i < src.length && !src[i].trim() && src[i + 1] !== undefined && ITEM.test(src[i + 1])) {
          const n = ITEM.exec(src[i + 1]);
          if (n[1].length !== base || /\d/.test(n[2]) !== ordered) break;
          i++;
        }
      }
      parent.append(list);
    } else if (line.includes("|") && i + 1 < src.length && TABLE_SEP.test(src[i + 1]) && src[i + 1].includes("-")) {
      const head = splitRow(line);
      const align = splitRow(src[i + 1]).map((c) => (c.endsWith(":") ? (c.startsWith(":") ? "center" : "right") : ""));
      const wrap = el(doc, "div", "table");
      const table = el(doc, "table");
      const tr = el(doc, "tr");
      head.forEach((c, k) => {
        const th = el(doc, "th");
        if (align[k]) th.className = `align-${align[k]}`;
        inline(doc, c, th);
        tr.append(th);
      });
      table.append(el(doc, "thead"));
      table.tHead.append(tr);
      const tbody = el(doc, "tbody");
      i += 2;
      while (i < src.length && src[i].includes("|") && src[i].trim()) {
        const row = el(doc, "tr");
        splitRow(src[i]).slice(0, head.length).forEach((c, k) => {
          const td = el(doc, "td");
          if (align[k]) td.className = `align-${align[k]}`;
          inline(doc, c, td);
          row.append(td);
        });
        tbody.append(row);
        i++;
      }
      table.append(tbody);
      wrap.append(table);
      parent.append(wrap);
    } else {
      const para = [];
      while (i < src.length && src[i].trim() && (para.length === 0 || !isBlockStart(src[i]))) {
        para.push(src[i].trim());
        i++;
      }
      const p = el(doc, "p");
      lines(doc, para.join("\n"), p);
      parent.append(p);
    }
  }
}

/** The Markdown `text` as a DocumentFragment of `doc`. */
export function renderMarkdown(text, doc = document) {
  const frag = doc.createDocumentFragment();
  blocks(doc, String(text).replace(/\r\n?/g, "\n").split("\n"), frag);
  return frag;
}
