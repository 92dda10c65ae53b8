"""Word lists behind the counterfactual rules (r1lib/data/counterfactual.py): which capitalized words are ordinary
words rather than names, which words around "her" decide its case, which gendered words have no partner in the term
pairs, and which topics are sex-specific (a twin of them would state something false)."""

from __future__ import annotations

import re

# Capitalized at the start of a sentence, these are ordinary words, not names (any other capitalized word there is
# taken for a name: a row skipped for nothing costs one twin, a name swapped costs the row its meaning).
COMMON_STARTERS = frozenset(
    """
    a an the this that these those there here it its i we you they he she his her him hers my your our their me us
    them one two three four five six seven eight nine ten some any each every all both many most much few several
    no none not if when where why how what which who whom whose while after before since until as because so but and
    or nor yet then than though although also however therefore thus hence still instead meanwhile finally first
    second third next last now today yesterday tomorrow tonight later once again already always never often sometimes
    usually in on at to for from by with without about above below under over into onto out up down off through
    during between among against around behind beside near across along per of like unlike despite except
    consider suppose assume given let find solve calculate compute determine evaluate simplify show prove explain
    describe write list name give provide create make generate translate summarize rewrite classify identify compare
    analyze answer choose select read tell help please imagine think use add subtract multiply divide round convert
    estimate express check note remember recall answer yes no ok okay well oh hello hi dear thanks thank sorry sure
    extract present format report return output put include edit correct fix complete fill predict sort arrange
    group count design develop build plan suggest recommend outline draft compose paraphrase rephrase detect state
    define discuss argue brainstorm categorize rank rate review proofread convert search look see take keep try
    pick match label tag annotate highlight underline replace remove delete insert change modify transform
    generate construct form produce prepare draw sketch paint design code implement debug test run print
    sure certainly absolutely great here of course unfortunately indeed overall additionally furthermore moreover
    generally typically according based following below above instead otherwise similarly alternatively lastly
    fine noted correct right true false wrong exactly agreed done great perfect good nice
    is are was were be been being do does did has have had can could would shall should might must
    mother father sister brother son daughter uncle aunt king queen husband wife man woman men women boy boys girl
    girls gentleman lady mr mrs ms dr person people someone somebody everyone everybody anyone nobody student students
    teacher teachers child children kid kids baby family friend friends doctor patient customer user
    on monday tuesday wednesday thursday friday saturday sunday january february march july september october
    november december
    another other others such same different new old good bad best worst more less least few little big small
    total each half double twice step steps example examples input output question questions problem problems
    solution solutions task tasks story title text sentence sentences word words paragraph passage data
    """.split()
)
# Capitalized inside a sentence yet no person: days, months, the pronoun I, countries and continents.
NOT_NAMES = frozenset(
    {"I", "I'm", "I'll", "I've", "I'd"}
    | set(
        """Africa America Asia Europe Australia Antarctica China Japan India Korea Russia Canada Mexico Brazil Peru
        Chile Argentina Spain France Germany Italy Portugal Norway Sweden Finland Denmark Iceland Ireland England
        Scotland Wales Britain Poland Austria Switzerland Belgium Netherlands Greece Turkey Egypt Kenya Nigeria
        Ethiopia Morocco Israel Iran Iraq Vietnam Thailand Indonesia Malaysia Singapore Philippines Pakistan
        Bangladesh Nepal Mongolia Cuba Jamaica Colombia Venezuela Ukraine Hungary Romania Bulgaria Croatia""".split()
    )
    | {w.capitalize() for w in "monday tuesday wednesday thursday friday saturday sunday".split()}
    | {
        w.capitalize()
        for w in "january february march april may june july august september october november december".split()
    }
)
# A word before an object "her" that is not a preposition: a verb taking two objects ("gives her double").
DITRANSITIVE = frozenset(
    """give gives gave given giving send sends sent sending tell tells told telling show shows showed shown showing
    offer offers offered offering buy buys bought buying pay pays paid paying lend lends lent lending bring brings
    brought bringing teach teaches taught teaching hand hands handed handing owe owes owed owing sell sells sold
    selling cost costs promise promises promised wish wishes wished get gets got getting make makes made making ask
    asks asked asking charge charges charged leave leaves left award awards awarded grant grants granted""".split()
)
# After these, "her" + a noun is a possessive ("to her friends", "and her sister", "was her idea").
POSSESSIVE_CONTEXT = frozenset(
    """to for from with without about of in on at by into onto over under through during between among against
    around behind beside near after before like unlike than as and or but nor is was are were be been being 's
    all both whom""".split()
)
# After "her", these make it an object: a clause or phrase starts ("saw her and", "gave her the", "told her to").
OBJECT_FOLLOWERS = frozenset(
    """and or but nor to with at in on for from that then again too the a an about as by so if when because while
    yesterday today tomorrow now here there up down out off back away into of is was not over around through
    very really once twice home first last later soon alone anyway either""".split()
)
NUMBER_LIKE = re.compile(
    r"^(?:\d[\d,.]*|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|forty|fifty|"
    r"hundred|thousand|half|double|triple|some|any|more|less|enough|several|many|much|no)$",
    re.IGNORECASE,
)
# Nouns a person commonly has ("her friends"): "her" before them is a possessive wherever it stands.
POSSESSED = frozenset(
    """own name names friend friends mother father mom dad parents parent sister sisters brother brothers son sons
    daughter daughters husband wife children child kids family families house home room car bike book books bag
    money pocket allowance salary pay savings account job work office class classmates teacher school homework
    dog dogs cat cats pet pets birthday party garden farm shop store business company team life hair eyes face hand
    hands arm arms leg legs head heart mind feet body phone computer toys toy clothes shoes dress shirt hat collection
    cookies cupcakes apples candies cards stamps marbles stickers pencils pens books coins grandmother grandfather
    grandparents aunt uncle cousin cousins neighbor neighbors boss colleagues coworkers students patients customers
    age weight height time turn way side best favorite favourite first last new old first old usual daily weekly
    monthly yearly total share part portion half""".split()
)
# After "her", these make it an object complement ("made her happy", "let her go", "helped her finish").
OBJECT_COMPLEMENTS = frozenset(
    """happy sad angry tired sick upset proud sure go come leave stay be do sing dance play work study read write
    eat sleep win lose finish start stop try feel look think know understand see hear buy pay""".split()
)
# Gendered words the term pairs do not swap: beside a swapped pronoun they would contradict the twin ("hers" too:
# "his" alone becomes "hers", but "hers" is no listed term to become "his").
UNPAIRED = re.compile(
    r"\b(?:princes?|princess(?:es)?|emperors?|empress(?:es)?|dukes?|duchess(?:es)?|nephews?|nieces?|"
    r"grand(?:father|mother|son|daughter|pa|ma)s?|boyfriends?|girlfriends?|actress(?:es)?|waitress(?:es)?|"
    r"heroines?|brides?|grooms?|monks?|nuns?|widows?|widowers?|fianc[eé]e?s?|moms?|mums?|mommy|mummy|dads?|"
    r"daddy|ma'am|madam|sirs?|stepfathers?|stepmothers?|stepsons?|stepdaughters?|priestess(?:es)?|kings|queens|"
    r"sons|daughters|fathers|mothers|brothers|sisters|uncles|aunts|husbands|wives|gentlemen|ladies|"
    r"males?|females?|masculine|feminine|manhood|womanhood|boyhood|girlhood|hers)\b"
    r"|[男女]|王子|公主|皇帝|皇后|太子|妃|嫔|娘娘|皇上|阿哥|格格|爷爷|奶奶|外公|外婆|叔叔|阿姨|舅舅|姑姑|伯伯|哥哥|姐姐|"
    r"弟弟|妹妹|爸爸|妈妈|父亲|母亲|儿子|儿媳|丈夫|妻子|老公|老婆|先生|小姐|夫人|太太",
    re.IGNORECASE,
)
# Sex-specific bodies and conditions: "she is pregnant" has no male twin.
SEX_SPECIFIC = re.compile(
    r"pregnan|breastfe|lactat|menstru|uter(?:us|ine)|ovar(?:y|ies|ian)|cervi[xc]|prostat|testic|testes|scrot|"
    r"vagin|penis|penile|miscarr|postpartum|menopaus|gynec|obstetric|erectile|怀孕|妊娠|孕|月经|子宫|卵巢|宫颈|"
    r"前列腺|睾丸|阴道|产后|绝经|哺乳|经期|乳腺",
    re.IGNORECASE,
)
# Chinese words that may open a clause right before 他/她 and are no name ("如果他", "所以她", "知道他").
CJK_CLAUSE_WORDS = frozenset(
    """如果 所以 那么 而且 或者 但是 因为 虽然 然后 于是 因此 并且 可是 不过 只要 即使 当时 后来 其实 同时 然而 所以说
    知道 觉得 认为 希望 告诉 看到 发现 听说 以为 相信 只有 除非 无论 不管 尽管 假如 要是 既然 如今 现在 今天 明天 昨天
    最后 首先 其次 接着 随后 突然 当然 也许 可能 或许 一直 总是 经常 有时 后来 终于 于是乎 例如 比如 另外 此外 还有 只是
    就是 可见 结果 总之 而 但 因 所 就 也 又 还 才 都 那 这 让 使 请 给 和 跟 与 对 向 被 把 将 为 当 在""".split()
)
