-- avb: pandoc filter for paper/main.tex (avb.report.latex.document).
--
-- * Images: a PNG with a PDF of the same name beside it is included as that PDF (vector graphics in the PDF build;
--   the Markdown keeps the PNG, which is what a Markdown viewer shows).
-- * Figure grids: a pipe table whose cells, after the first column, each hold one image (or nothing) is a figure laid
--   out one row per table row: the first cell's text above the row, the row's images side by side at one height
--   (\avbgridheight, shrunk to the line width when wider). Rows may break across pages, so 18 runs stay readable; the
--   table's caption (": caption" under the table) becomes the figure's caption, above the grid. Figures floating
--   before it are placed first (\FloatBarrier), so the numbering stays in page order.
-- * Inline code: words longer than 16 characters (commit hashes, paths) may break after "/", "_" or ",", and every
--   10 characters of a piece still longer, instead of running into the margin; shorter words (a command's flags)
--   never break, and the characters themselves are unchanged.
-- * Code blocks longer than 40 lines (the configuration) are set small in two columns.

local function pdf_beside(src)
  local pdf = src:gsub("%.png$", ".pdf")
  if pdf == src then
    return src
  end
  local f = io.open(pdf, "rb")
  if f == nil then
    return src
  end
  f:close()
  return pdf
end

function Image(img)
  img.src = pdf_beside(img.src)
  return img
end

-- The image of a cell holding exactly one image; false for a cell holding anything else, nil for an empty one.
local function cell_image(cell)
  local blocks = cell.contents
  if #blocks == 0 then
    return nil
  end
  if #blocks ~= 1 or (blocks[1].t ~= "Plain" and blocks[1].t ~= "Para") then
    return false
  end
  local inlines = blocks[1].content
  if #inlines == 1 and inlines[1].t == "Image" then
    return inlines[1]
  end
  return false
end

local function latex_of(blocks)
  return (pandoc.write(pandoc.Pandoc(blocks), "latex"):gsub("%s+$", ""))
end

function Table(tbl)
  if not FORMAT:match("latex") then
    return nil
  end
  local rows, n_images = {}, 0
  for _, body in ipairs(tbl.bodies) do
    for _, row in ipairs(body.body) do
      local images = {}
      for i = 2, #row.cells do
        local img = cell_image(row.cells[i])
        if img == false then
          return nil -- an ordinary table
        end
        if img ~= nil then
          table.insert(images, "\\includegraphics[height=\\avbgridheight]{" .. img.src .. "}")
          n_images = n_images + 1
        end
      end
      table.insert(rows, { label = latex_of(row.cells[1].contents), images = images })
    end
  end
  if n_images == 0 then
    return nil
  end
  local out = { "\\FloatBarrier", "\\begingroup\\centering" }
  if #tbl.caption.long > 0 then
    table.insert(out, "\\captionof{figure}{" .. latex_of(tbl.caption.long) .. "}\\par\\medskip")
  end
  for _, row in ipairs(rows) do
    table.insert(out, "\\begin{minipage}{\\linewidth}\\centering{\\small " .. row.label .. "}\\par\\smallskip")
    table.insert(out, "\\adjustbox{max width=\\linewidth}{" .. table.concat(row.images, "\\hspace{1em}") .. "}")
    table.insert(out, "\\end{minipage}\\par\\medskip")
  end
  table.insert(out, "\\endgroup")
  return pandoc.RawBlock("latex", table.concat(out, "\n"))
end

local BREAK_AFTER = { ["/"] = true, ["_"] = true, [","] = true }
local LONG = 16 -- a word of code longer than this may break

-- The pieces of one word of code: after "/", "_" or ",", and every 10 characters of a piece still longer than LONG.
local function word_pieces(word)
  local pieces, chunk = {}, {}
  for _, cp in utf8.codes(word) do
    local ch = utf8.char(cp)
    table.insert(chunk, ch)
    if BREAK_AFTER[ch] then
      table.insert(pieces, table.concat(chunk))
      chunk = {}
    end
  end
  table.insert(pieces, table.concat(chunk))
  local out = {}
  for _, piece in ipairs(pieces) do
    if utf8.len(piece) > LONG then
      local i, n = 1, utf8.len(piece)
      while i <= n do
        local j = math.min(i + 9, n)
        table.insert(out, piece:sub(utf8.offset(piece, i), utf8.offset(piece, j + 1) - 1))
        i = j + 1
      end
    elseif piece ~= "" then
      table.insert(out, piece)
    end
  end
  return out
end

function Code(code)
  if not FORMAT:match("latex") then
    return nil
  end
  local pieces, split = {}, false
  local text = code.text
  local pos = 1
  while pos <= #text do
    local s, e = text:find("[^ ]+", pos)
    if s == nil then
      break
    end
    local prefix = text:sub(pos, s - 1) -- the spaces before the word
    local word = text:sub(s, e)
    local parts = utf8.len(word) > LONG and word_pieces(word) or { word }
    split = split or #parts > 1
    parts[1] = prefix .. parts[1]
    for _, part in ipairs(parts) do
      table.insert(pieces, part)
    end
    pos = e + 1
  end
  if not split then
    return nil
  end
  pieces[#pieces] = pieces[#pieces] .. text:sub(pos)
  local out = {}
  for i, piece in ipairs(pieces) do
    if i > 1 then
      table.insert(out, pandoc.RawInline("latex", "\\allowbreak{}"))
    end
    table.insert(out, pandoc.Code(piece))
  end
  return out
end

function CodeBlock(block)
  if not FORMAT:match("latex") then
    return nil
  end
  local _, lines = block.text:gsub("\n", "")
  if lines < 40 or block.text:find("\\end{verbatim}", 1, true) then
    return nil
  end
  return pandoc.RawBlock("latex", "\\begin{multicols}{2}\\footnotesize\n\\begin{verbatim}\n" .. block.text
    .. "\n\\end{verbatim}\n\\end{multicols}")
end

-- A grid right under its heading: the barrier goes above the heading, which stays with its grid.
function Blocks(blocks)
  if not FORMAT:match("latex") then
    return nil
  end
  for i = #blocks, 2, -1 do
    local b = blocks[i]
    if b.t == "RawBlock" and b.text:sub(1, 13) == "\\FloatBarrier" and blocks[i - 1].t == "Header" then
      blocks:insert(i - 1, pandoc.RawBlock("latex", "\\FloatBarrier"))
    end
  end
  return blocks
end
