"""Personal data in raw CEB text (the dead-letter tool shows rejected records masked)."""
from __future__ import annotations

def test_personal_values_are_masked_in_raw_text_of_either_form():
    from processors.documents import mask_personal

    xml = ("<ceb:OrderHead><ceb:orderNo>HN1</ceb:orderNo><ceb:buyerIdNumber>11010519491231002X</ceb:buyerIdNumber>"
           "<ceb:consignee>张三</ceb:consignee><ceb:consigneeTelephone>13800138000</ceb:consigneeTelephone>")
    out = mask_personal(xml)
    assert "11010519491231002X" not in out and "张三" not in out and "13800138000" not in out
    assert "<ceb:orderNo>HN1</ceb:orderNo>" in out and out.count("***") == 3
    js = '{"OrderHead": {"orderNo": "HN1", "buyerName" : "李四", "buyerTelephone": 13900139000, "note": "a\\"b"}}'
    out = mask_personal(js)
    assert "李四" not in out and "13900139000" not in out and '"orderNo": "HN1"' in out and '"note": "a\\"b"' in out
    # Malformed input keeps nothing shaped like an ID number, whatever it is called.
    assert mask_personal("{broken buyerIdNo=11010519491231002X logisticsNo=YT0000000000000001234")\
        == "{broken buyerIdNo=*** logisticsNo=YT0000000000000001234"


def test_a_batch_memo_of_personal_hashes_changes_nothing_but_the_work():
    from processors.documents import normalise

    head = {"orderNo": "HN1", "buyerIdNumber": "11010519491231002X", "buyerName": "张三", "consignee": "张三",
            "note": ""}
    memo: dict[str, str] = {}
    with_memo = normalise("311", head, [{"gnum": "1"}], b"k" * 32, memo)
    assert with_memo == normalise("311", head, [{"gnum": "1"}], b"k" * 32)
    assert with_memo["head"]["buyerName"] == with_memo["head"]["consignee"] != "张三"
    assert with_memo["head"]["buyerIdNumberValid"] is True and "note" not in with_memo["head"]
    assert len(memo) == 2  # the ID and the name, hashed once each
    # Another key hashes differently even for a value seen before (the memo is per worker key and batch).
    assert normalise("311", head, [], b"j" * 32)["head"]["buyerName"] != with_memo["head"]["buyerName"]
